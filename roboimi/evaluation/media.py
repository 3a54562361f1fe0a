"""Rollout media for people: captions on frames, the trajectory legend, GIF/MP4 files and a contact sheet.

Frames are (H, W, 3) uint8 arrays rendered at the evaluator's media size, independent of the policy's cameras.
"""
from collections.abc import Sequence
from pathlib import Path

import imageio.v3 as iio
import numpy as np
from PIL import Image, ImageDraw, ImageFont

FRAME_MS = 20  # one frame per 50 Hz control step: GIF and MP4 play in real time
# imageio plugin and its options per video suffix. Pillow takes the GIF frame duration in ms and loop=0 (forever);
# imageio-ffmpeg takes frames per second.
VIDEO_WRITERS = {
    ".gif": dict(plugin="pillow", duration=FRAME_MS, loop=0),
    ".mp4": dict(plugin="FFMPEG", fps=round(1000 / FRAME_MS)),
}
TEXT_RGB = (255, 255, 255)
TEXT_BOX_RGBA = (0, 0, 0, 160)
SHEET_THUMBNAIL_HW = (120, 160)
SHEET_LABEL_WIDTH = 220


def _font(image_height: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=max(10, image_height // 28))


def caption(frame: np.ndarray, lines: Sequence[str]) -> np.ndarray:
    """`frame` with `lines` written top-left on a translucent box."""
    image = Image.fromarray(frame).convert("RGBA")
    overlay = Image.new("RGBA", image.size)
    draw = ImageDraw.Draw(overlay)
    font = _font(image.height)
    text = "\n".join(lines)
    left, top, right, bottom = draw.multiline_textbbox((8, 6), text, font=font)
    draw.rectangle((left - 4, top - 3, right + 4, bottom + 3), fill=TEXT_BOX_RGBA)
    draw.multiline_text((8, 6), text, font=font, fill=TEXT_RGB)
    return np.asarray(Image.alpha_composite(image, overlay).convert("RGB"))


def legend(frame: np.ndarray, entries: Sequence[tuple[str, Sequence[float]]]) -> np.ndarray:
    """`frame` with a bottom-right legend: one (label, rgba in [0, 1]) swatch per entry."""
    image = Image.fromarray(frame).convert("RGBA")
    overlay = Image.new("RGBA", image.size)
    draw = ImageDraw.Draw(overlay)
    font = _font(image.height)
    line_height = int(font.size * 1.4)
    width = max(int(draw.textlength(label, font=font)) for label, _ in entries) + line_height + 16
    x0, y0 = image.width - width - 8, image.height - line_height * len(entries) - 12
    draw.rectangle((x0, y0, image.width - 8, image.height - 8), fill=TEXT_BOX_RGBA)
    for row, (label, rgba) in enumerate(entries):
        y = y0 + 4 + row * line_height
        swatch = tuple(int(255 * c) for c in rgba[:3])
        draw.ellipse((x0 + 6, y + 2, x0 + line_height - 2, y + line_height - 4), fill=swatch)
        draw.text((x0 + line_height + 4, y), label, font=font, fill=TEXT_RGB)
    return np.asarray(Image.alpha_composite(image, overlay).convert("RGB"))


def write_video(path, frames: Sequence[np.ndarray]) -> None:
    """Write (H, W, 3) uint8 frames to `path` as a looping GIF or an MP4, by its suffix (see VIDEO_WRITERS)."""
    suffix = Path(path).suffix.lower()
    if suffix not in VIDEO_WRITERS:
        raise ValueError(f"Unsupported video file {str(path)!r}; use one of: {', '.join(VIDEO_WRITERS)}.")
    iio.imwrite(path, np.stack(frames), is_batch=True, **VIDEO_WRITERS[suffix])


def thumbnails(frames: Sequence[np.ndarray], count: int) -> list[np.ndarray]:
    """`count` evenly spaced frames (first and last included), shrunk to SHEET_THUMBNAIL_HW."""
    picks = np.linspace(0, len(frames) - 1, num=min(count, len(frames))).round().astype(int)
    height, width = SHEET_THUMBNAIL_HW
    return [np.asarray(Image.fromarray(frames[i]).resize((width, height), Image.Resampling.BILINEAR)) for i in picks]


def contact_sheet(rows: Sequence[tuple[str, Sequence[np.ndarray]]]) -> np.ndarray:
    """One strip per episode: its label on the left, then its thumbnails left to right."""
    height, width = SHEET_THUMBNAIL_HW
    columns = max(len(strip) for _, strip in rows)
    sheet = Image.new("RGB", (SHEET_LABEL_WIDTH + columns * (width + 4), len(rows) * (height + 4)), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    font = ImageFont.load_default(size=16)
    for row, (label, strip) in enumerate(rows):
        y = row * (height + 4)
        draw.multiline_text((8, y + 8), label, font=font, fill=TEXT_RGB)
        for column, thumbnail in enumerate(strip):
            sheet.paste(Image.fromarray(thumbnail), (SHEET_LABEL_WIDTH + column * (width + 4), y))
    return np.asarray(sheet)
