"""Encoders out to Hugging Face transformers (`salt export`): the model folder (`hf_export`) and
what feeds it a video the way SALT did (`hf_feeding`: the video-processor config, the README)."""
