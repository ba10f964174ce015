"""Sample data shipped with medpt, written by the medpt authors (not copied from any corpus).

- medical_qa_zh.jsonl: Chinese medical questions and answers in the ShareGPT shape of the reference corpus.
- general_zh.jsonl: general (non-medical) Chinese paragraphs, {"text": ...}, to measure forgetting.
- medical_mcq_zh.jsonl: medical multiple-choice questions {"question", "choices", "answer", "subject"}.
- questions_zh.jsonl: questions for `medpt compare` and `medpt generate`, {"question": ...}.
"""

from pathlib import Path

SAMPLE_DIR = Path(__file__).parent / "sample_data"
SAMPLE_QA = SAMPLE_DIR / "medical_qa_zh.jsonl"
SAMPLE_GENERAL = SAMPLE_DIR / "general_zh.jsonl"
SAMPLE_MCQ = SAMPLE_DIR / "medical_mcq_zh.jsonl"
SAMPLE_QUESTIONS = SAMPLE_DIR / "questions_zh.jsonl"
