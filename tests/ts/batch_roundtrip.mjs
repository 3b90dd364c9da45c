// Create, poll and read a batch with the official TypeScript SDK, unmodified.
// Usage: node batch_roundtrip.mjs BASE_URL   (prints one JSON summary line)
import Anthropic from "@anthropic-ai/sdk";

const client = new Anthropic({ apiKey: "ts-conformance", baseURL: process.argv[2] });
const prompts = { "ts-a": "alpha", "ts-b": "bravo", "ts-c": "charlie" };
const batch = await client.messages.batches.create({
  requests: Object.entries(prompts).map(([custom_id, word]) => ({
    custom_id,
    params: {
      model: "claude-haiku-4-5",
      max_tokens: 100,
      messages: [{ role: "user", content: `Say ${word}` }],
    },
  })),
});
let current = batch;
for (let i = 0; i < 200 && current.processing_status !== "ended"; i++) {
  await new Promise((resolve) => setTimeout(resolve, 100));
  current = await client.messages.batches.retrieve(batch.id);
}
const results = {};
for await (const line of await client.messages.batches.results(batch.id)) {
  const block = line.result.message.content.find((b) => b.type === "text");
  results[line.custom_id] = { type: line.result.type, text: block.text };
}
const page = await client.messages.batches.list({ limit: 5 });
console.log(
  JSON.stringify({
    id: batch.id,
    status: current.processing_status,
    counts: current.request_counts,
    results,
    listed: page.data.map((b) => b.id),
  }),
);
