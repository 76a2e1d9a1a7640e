"""Real photographs that ship inside installed packages, with hand-checked captions and entity boxes.

Boxes are pixel (x0, y0, x1, y1) in the original image, drawn by looking at each photo over a 50 px grid.
A phrase may have several boxes (GRIT repeats a span once per detected instance).
"""
from __future__ import annotations

import io
from dataclasses import dataclass

from PIL import Image


@dataclass(frozen=True)
class Photo:
    name: str
    caption: str
    entities: tuple[tuple[str, tuple[int, int, int, int]], ...]  # (phrase as it appears in caption, box)
    licence: str

    def load(self) -> Image.Image:
        if self.name == "grace_hopper":
            import matplotlib.cbook

            with matplotlib.cbook.get_sample_data("grace_hopper.jpg") as f:
                return Image.open(io.BytesIO(f.read())).convert("RGB")
        import skimage.data

        return Image.fromarray(getattr(skimage.data, self.name)()).convert("RGB")

    def chunks(self) -> list[list[float]]:
        """GRIT noun_chunks: [char_start, char_end, x_min, y_min, x_max, y_max, confidence], boxes normalized."""
        width, height = self.load().size
        out = []
        for phrase, (x0, y0, x1, y1) in self.entities:
            start = self.caption.index(phrase)
            out.append([float(start), float(start + len(phrase)), x0 / width, y0 / height, x1 / width, y1 / height, 0.9])
        return out


PHOTOS: tuple[Photo, ...] = (
    Photo("astronaut",
          "An astronaut in an orange spacesuit smiles in front of an American flag and a space shuttle model, "
          "next to a helmet.",
          (("An astronaut", (20, 12, 365, 512)), ("an American flag", (0, 0, 95, 500)),
           ("a space shuttle model", (352, 0, 472, 285)), ("a helmet", (275, 343, 505, 512))),
          "public domain (NASA); scikit-image sample data"),
    Photo("coffee",
          "A cup of espresso on a red saucer with a silver spoon on a wooden table.",
          (("A cup of espresso", (173, 18, 412, 300)), ("a red saucer", (75, 62, 480, 390)),
           ("a silver spoon", (325, 65, 425, 328)), ("a wooden table", (0, 0, 600, 400))),
          "CC0 (Rachel Michetti); scikit-image sample data"),
    Photo("chelsea",
          "A close-up of a tabby cat with green eyes and a pink nose.",
          (("a tabby cat", (0, 0, 451, 300)), ("green eyes", (135, 82, 345, 165)),
           ("a pink nose", (232, 222, 295, 268))),
          "CC0 (Stefan van der Walt); scikit-image sample data"),
    Photo("rocket",
          "A rocket on the launch pad at dusk between lightning towers.",
          (("A rocket", (303, 125, 342, 405)), ("the launch pad", (265, 355, 390, 427)),
           ("lightning towers", (0, 0, 95, 400)), ("lightning towers", (555, 0, 640, 427))),
          "public domain (SpaceX); scikit-image sample data"),
    Photo("grace_hopper",
          "A portrait of Grace Hopper in a navy uniform and cap in front of an American flag.",
          (("Grace Hopper", (25, 22, 512, 600)), ("a navy uniform", (20, 320, 512, 600)),
           ("cap", (150, 22, 372, 175)), ("an American flag", (0, 0, 240, 590))),
          "public domain (U.S. Navy); matplotlib sample data"),
)
