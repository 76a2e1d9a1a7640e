"""Publishing a built dataset to the Hugging Face Hub: the repo layout, the dataset card, resumable uploads.
`publish(dataset, cfg)` (x2i/publish/run.py) runs the whole sequence `x2i publish` runs."""
from x2i.publish.hub import PublishConfig
from x2i.publish.run import Published, publish

__all__ = ["PublishConfig", "Published", "publish"]
