"""The shared fixtures give real services: a failure here points at the machine, not at the code under test."""

import json

import pytest


def test_tiny_model_loads_through_from_pretrained(tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert type(model).__name__ == "Qwen2ForCausalLM"
    out = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Who are you?"}, {"role": "assistant", "content": "I am twinkle."}],
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    assert 0 < sum(out["assistant_masks"]) < len(out["input_ids"])


def test_self_cognition_rows_have_placeholders(self_cognition_file):
    rows = [json.loads(line) for line in self_cognition_file.read_text().splitlines()]
    assert len(rows) == 80
    assert all("{{NAME}}" in r["response"] and "{{AUTHOR}}" in r["response"] for r in rows)


def test_redis_is_real(redis_url):
    import redis

    client = redis.Redis.from_url(redis_url)
    client.xadd("smoke", {"line": "hello"})
    assert client.xrange("smoke")[0][1] == {b"line": b"hello"}


def test_s3_server_is_real(s3_bucket):
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=s3_bucket["endpoint_url"],
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
        region_name="us-east-1",
    )
    s3.put_object(Bucket=s3_bucket["bucket"], Key="a/b.txt", Body=b"data")
    assert s3.get_object(Bucket=s3_bucket["bucket"], Key="a/b.txt")["Body"].read() == b"data"


@pytest.mark.postgres
def test_postgres_is_real(postgres_url):
    import sqlalchemy as sa

    with sa.create_engine(postgres_url).connect() as conn:
        assert conn.execute(sa.text("select 1 + 1")).scalar() == 2
