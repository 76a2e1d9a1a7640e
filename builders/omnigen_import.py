"""Import OmniGen-format JSONL (OmniGen's fine-tuning data, the released X2I subsets) into the x2i schema.

The task, instruction and images come from the JSONL as they are; images are brought to the size policy
(original bytes pass through when they already meet it), and rows get a deterministic id unless the JSONL
carries one (as `x2i export` writes it, so an export/import round trip keeps ids).
"""
from __future__ import annotations

from dataclasses import dataclass

from x2i.builders import Builder
from x2i.core.imageio import JpegSettings, fit
from x2i.core.sample import Sample
from x2i.engine.registry import register_builder
from x2i.engine.steps import Context, MapStep, Step


@dataclass
class ImportParams:
    pass


class ImportStep(MapStep):
    name = "omnigen_import"

    def __init__(self, max_side: int, max_input_side: int, multiple: int, quality: JpegSettings):
        self.max_side, self.max_input_side, self.multiple, self.quality = max_side, max_input_side, multiple, quality

    def process(self, sample: Sample, ctx: Context) -> Sample:
        sample.output_image, _ = fit(sample.output_image, self.max_side, self.multiple, self.quality)
        sample.input_images = [fit(im, self.max_input_side, self.multiple, self.quality)[0]
                               for im in sample.input_images]
        if not sample.id:
            sample.with_id({"import": "omnigen"})
        return sample


@register_builder("omnigen_import")
class OmniGenImportBuilder(Builder):
    name = "omnigen_import"
    source_formats = ("omnigen",)
    Params = ImportParams

    def steps(self) -> list[Step]:
        o = self.recipe.output
        return [ImportStep(o.max_side, o.max_input_side, o.multiple, o.jpeg)]
