"""Why a record read is not in the prepared splits: one name per reason, shared by the stages that skip records and
the data report that counts them (records read = documents kept + every skip, medpt.data.report)."""

from __future__ import annotations

BAD_RECORD = "bad_record"  # malformed: not JSON, a field missing or of the wrong type (--on_bad_record skip)
TOO_LARGE = "too_large"  # over --max_record_mb
EMPTY = "empty"  # no text once rendered
DUPLICATE = "duplicate"  # the same rendered text earlier in its source (--dedup exact)
IN_VALIDATION_SET = "in_validation_set"  # a training document identical to one of the source's validation files
NEAR_DUPLICATE = "near_duplicate"  # --dedup near
CONTAMINATED = "contaminated"  # shares an n-gram with a checked benchmark item (--decontaminate)

SKIP_REASONS = (BAD_RECORD, TOO_LARGE, EMPTY, DUPLICATE, IN_VALIDATION_SET, NEAR_DUPLICATE, CONTAMINATED)  # as reported
REJECTED_REASONS = (BAD_RECORD, TOO_LARGE)  # the reasons whose records are kept whole in rejected.jsonl
EMPTY_FILE = "empty_file"  # a file without one record: reported as "empty_files", not as a skipped record
