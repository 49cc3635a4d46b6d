"""Encoding throughput: ``Dataset.encode`` against a plain loop of ``tokenizer.apply_chat_template``.

Both encode the same self-cognition conversations (the bundled rows repeated to ``--rows``) with the tiny model's
tokenizer. The baseline is what a hand-written loop does: ``apply_chat_template(tokenize=True, return_dict=True,
return_assistant_tokens_mask=True)`` per conversation, which gives ids and the assistant mask but no labels.
``Dataset.encode`` also builds rolled labels, attention mask, position ids and length, and stores the result.

    python bench/encode.py [--rows 4000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=3, help="best of N timings for each side")
    args = parser.parse_args()

    import datasets

    datasets.disable_progress_bars()
    from transformers import AutoTokenizer

    from twinkle.assets import self_cognition_rows, tiny_model_path
    from twinkle.dataset import Dataset, DatasetMeta
    from twinkle.preprocessor import SelfCognitionProcessor

    model_dir = str(tiny_model_path())
    processor = SelfCognitionProcessor("twinkle LLM", "ModelScope community")
    base_rows = [processor.preprocess(row) for row in self_cognition_rows()]
    rows = [base_rows[i % len(base_rows)] for i in range(args.rows)]
    tokenizer = AutoTokenizer.from_pretrained(model_dir)

    def baseline() -> float:
        start = time.perf_counter()
        for row in rows:
            out = tokenizer.apply_chat_template(
                row["messages"], tokenize=True, return_dict=True, return_assistant_tokens_mask=True
            )
            assert out["input_ids"]
        return time.perf_counter() - start

    def ours() -> float:
        dataset = Dataset(dataset_meta=DatasetMeta(data=rows))
        dataset.set_template("Template", model_id=model_dir, max_length=2048)
        start = time.perf_counter()
        dataset.encode()
        elapsed = time.perf_counter() - start
        assert len(dataset) == len(rows)
        return elapsed

    ours()  # warm-up: imports, template compilation
    t_base = min(baseline() for _ in range(args.repeats))
    t_ours = min(ours() for _ in range(args.repeats))
    base_rate, our_rate = len(rows) / t_base, len(rows) / t_ours
    print(f"rows: {len(rows)} (best of {args.repeats})")
    print(f"baseline apply_chat_template loop: {base_rate:9.0f} samples/s")
    print(f"twinkle Dataset.encode:            {our_rate:9.0f} samples/s")
    print(f"ratio (ours / baseline):           {our_rate / base_rate:9.2f}x")


if __name__ == "__main__":
    main()
