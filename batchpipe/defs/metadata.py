"""Every `batchpipe/` metadata and tag key batchpipe puts on Dagster's records, in one place.

Each value is what a user reads in the UI, plots, or filters runs on: renaming one
breaks their saved views, and records written before the rename keep the old key.

Written by assets.py (the steps' materializations, the results step's observation),
sensors.py (the sensor's progress observations, its runs' tags, the schedule's
metadata and tags), build.py (a broken file's asset) and runs.py (the CLI run's tag).
Read back by sensors.py (OPEN_BATCHES from the steps' records, the provenance tags of
the run that sent the batches), the checks in assets.py (WITHOUT_RESULT, ERRORED,
PARSE_ERRORS) and runs.py (what `batchpipe run` prints). steps.py knows none of them:
it returns summaries, which assets.py turns into metadata.

Dagster's own keys (`dagster/row_count`, `dagster/table_name`, `dagster/backfill`, ...)
are Dagster's names and are written as such where they are used.
"""

# Materialization metadata of the steps (and of the sensor's progress observations,
# which share SUCCEEDED, ERRORED, CANCELED and EXPIRED with batch_status).
REQUESTS = "batchpipe/requests"
TO_SEND = "batchpipe/to_send"
REUSED = "batchpipe/reused"
SENT_NOW = "batchpipe/sent_now"
BATCH_IDS = "batchpipe/batch_ids"
OPEN_BATCHES = "batchpipe/open_batch_ids"  # batch ids still open after a step: the sensor's
PROCESSING = "batchpipe/processing"
SUCCEEDED = "batchpipe/succeeded"
ERRORED = "batchpipe/errored"
CANCELED = "batchpipe/canceled"
EXPIRED = "batchpipe/expired"
BATCHES_LOADED = "batchpipe/batches_loaded"
RESULTS_LOADED = "batchpipe/results_loaded"
RETRIED = "batchpipe/retried"
MISSING = "batchpipe/missing"
WITHOUT_RESULT = "batchpipe/without_result"
PARSE_ERRORS = "batchpipe/parse_errors"
INPUT_TOKENS = "batchpipe/input_tokens"
OUTPUT_TOKENS = "batchpipe/output_tokens"
CACHE_CREATION_INPUT_TOKENS = "batchpipe/cache_creation_input_tokens"
CACHE_READ_INPUT_TOKENS = "batchpipe/cache_read_input_tokens"
COST_USD = "batchpipe/cost_usd"
STANDARD_COST_USD = "batchpipe/standard_cost_usd"
ESTIMATED_USD = "batchpipe/estimated_usd"
ESTIMATED_LOW_USD = "batchpipe/estimated_low_usd"
ESTIMATED_HIGH_USD = "batchpipe/estimated_high_usd"
PREVIEW = "batchpipe/preview"
MEDIA_FILES = "batchpipe/media_files"  # distinct images and documents the requests name
MEDIA_TOKENS = "batchpipe/media_tokens"  # their estimated input tokens
# Requests held back by a queue or rate limit, the cap, or a canary (batch_status, and the
# results step's observation): how many, why, and from when the sensor's run sends them.
HELD = "batchpipe/held_requests"
HELD_REASON = "batchpipe/held_reason"
HELD_UNTIL = "batchpipe/held_until"

# The sensor's progress observations of batch_status: each field of the batches'
# request_counts under its own key, all of them together, and each batch's status.
REQUEST_COUNT_KEYS = {
    "processing": PROCESSING,
    "succeeded": SUCCEEDED,
    "errored": ERRORED,
    "canceled": CANCELED,
    "expired": EXPIRED,
}
REQUEST_COUNTS = "batchpipe/request_counts"
BATCHES = "batchpipe/batches"

# The schedule's metadata.
PARTITIONS = "batchpipe/partitions"
SCHEDULE_OFFSET_DAYS = "batchpipe/schedule_offset_days"

# A broken pipeline file's asset.
FILE = "batchpipe/file"
PROBLEMS = "batchpipe/problems"

# Run tags: PIPELINE_TAG on every run batchpipe starts (the CLI's, the schedule's, the
# sensor's), PARTITION_TAG on the schedule's and the sensor's; the sensor's runs also say
# which run sent their batches and, for a backfill's, which backfill. And the broken
# file asset's tag.
PIPELINE_TAG = "batchpipe/pipeline"
PARTITION_TAG = "batchpipe/partition"
SUBMITTED_BY_RUN_TAG = "batchpipe/submitted_by_run"
BACKFILL_TAG = "batchpipe/backfill"
BROKEN_TAG = "batchpipe/broken"
