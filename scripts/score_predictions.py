"""Score a generated_predictions.jsonl offline: ROUGE-1/2/L and BLEU-4 as ChatGLM's ptuning/main.py.

    python scripts/score_predictions.py outputs/adgen-ptuning/generated_predictions.jsonl
    python scripts/score_predictions.py preds.jsonl --prediction_key predict --reference_key label

Any JSON-lines file with a prediction and a reference per line works (ChatGLM writes "labels").
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from zhtrain.metrics import rouge_bleu, strip_tokenizer_spaces  # noqa: E402


def score_file(path: str, prediction_key: str = "predict", reference_key: str = "label") -> dict:
    """Mean ROUGE / BLEU over the lines of a predictions file."""
    predictions, references = [], []
    with open(path, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            row = json.loads(line)
            reference_field = reference_key if reference_key in row else "labels"
            missing = [k for k in (prediction_key, reference_field) if k not in row]
            if missing:
                raise ValueError(f"{path} line {number} has no {', '.join(missing)} (keys: {', '.join(row)}).")
            predictions.append(strip_tokenizer_spaces(str(row[prediction_key] or "")))
            references.append(strip_tokenizer_spaces(str(row[reference_field] or "")))
    if not predictions:
        raise ValueError(f"{path} holds no predictions.")
    return {"samples": len(predictions), **rouge_bleu(predictions, references)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("file", help="JSON lines with a prediction and a reference per line.")
    parser.add_argument("--prediction_key", default="predict")
    parser.add_argument("--reference_key", default="label")
    args = parser.parse_args(argv)
    try:
        print(json.dumps(score_file(args.file, args.prediction_key, args.reference_key), ensure_ascii=False, indent=2))
    except (ValueError, OSError) as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
