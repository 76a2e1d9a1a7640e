"""Publishing a built dataset to the Hugging Face Hub: the repo layout, the dataset card, resumable uploads."""
