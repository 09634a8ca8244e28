"""Teachers beyond HuBERT: any Transformers speech encoder, Whisper from CTranslate2 files, mirrored students.

- `ctranslate2`: read a CTranslate2 Whisper folder (faster-whisper's format) into transformers' Whisper;
- `encoders`: `TeacherEncoder`, each family's inputs, frames and masking (`teacher_encoder`);
- `mirror`: `student_from_teacher`, an ARMHubert copy of a teacher's encoder with attention-map reuse;
- `transcribe`: Whisper's decoder on any encoder's output, greedy, and its WER.
"""
