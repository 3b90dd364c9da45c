"""Write the demo's product photos and scanned invoices into pipelines/media/.

The files are committed, so `make demo` needs nothing but the repository; this script is
how they were made (run it again after changing it: the output is the same bytes on every
machine, Pillow's PNG and PDF writers being deterministic for the same input). Photos are
small flat drawings, PNG and JPEG, so the demo shows both types; invoices are PDFs of one or
two pages, rasterized as a scanner would make them.

    .venv/bin/python scripts/demo_media.py
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

OUT = Path(__file__).resolve().parent.parent / "pipelines" / "media"
COLOURS = ["#d9480f", "#2b8a3e", "#1864ab", "#862e9c", "#e67700", "#0b7285"]
SHAPES = ("lamp", "backpack", "kettle", "notebook", "chair", "mug")


def photo(i: int) -> Image.Image:
    """A 160x120 drawing of product i: a coloured shape on a light floor."""
    image = Image.new("RGB", (160, 120), "#f1f3f5")
    draw = ImageDraw.Draw(image)
    colour = COLOURS[i % len(COLOURS)]
    draw.rectangle((0, 90, 160, 120), fill="#ced4da")
    shape = SHAPES[i % len(SHAPES)]
    if shape in ("lamp", "kettle", "mug"):
        draw.ellipse((50, 20 + i % 7, 110, 90), fill=colour)
    else:
        draw.rectangle((45, 25 + i % 9, 115, 90), fill=colour)
    draw.text((6, 6), f"{shape} #{i}", fill="#212529")
    return image


def invoice_page(number: str, page: int, pages: int, lines: int) -> Image.Image:
    """An A4-shaped page at 50 dpi, as a scanner would rasterize it."""
    image = Image.new("L", (413, 584), 250)
    draw = ImageDraw.Draw(image)
    draw.text((30, 30), f"INVOICE {number}   page {page} of {pages}", fill=0)
    for line in range(lines):
        y = 80 + line * 22
        draw.text((30, y), f"item {page}-{line + 1}", fill=20)
        draw.text((300, y), f"{(line + 3) * 7.5:8.2f}", fill=20)
    if page == pages:
        draw.text((30, 520), f"TOTAL due {number[-2:]} days", fill=0)
    return image


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    for i in range(1, 13):
        kind = "jpg" if i % 4 == 0 else "png"
        image = photo(i)
        if kind == "jpg":
            image.save(OUT / f"photo_{i:02d}.jpg", "JPEG", quality=80)
        else:
            image.save(OUT / f"photo_{i:02d}.png", "PNG", optimize=True)
    for i in range(1, 10):
        number = f"INV-{2600 + i}"
        pages = 1 + i % 2
        scans = [invoice_page(number, p, pages, 4 + (i + p) % 5) for p in range(1, pages + 1)]
        scans[0].save(
            OUT / f"{number}.pdf", "PDF", resolution=50, save_all=True, append_images=scans[1:]
        )
    print(f"wrote {len(list(OUT.iterdir()))} files to {OUT}")


if __name__ == "__main__":
    main()
