"""Speech data in: audio files (`audio`), long recordings window by window (`chunking`), LibriSpeech
(`librispeech`), labelled audio (`labelled_audio`), `datasets` folders (`saved_datasets`) and the bundled
real-speech split (`real_speech`)."""
