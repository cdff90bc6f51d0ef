"""``python -m bench kvrouting``'s own logic, without engines: the CLI and the workload."""

from __future__ import annotations

import argparse

from bench import kvrouting


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    kvrouting.add_parser(parser.add_subparsers())
    return parser.parse_args(["kvrouting", *argv])


def test_defaults_and_policies() -> None:
    args = parse()
    assert args.policies.split(",") == ["single", "kv", "prefix", "least_loaded"]
    assert args.func is kvrouting.run and args.num_blocks == 0
    assert parse("--policies", "kv,vllm-router:cache_aware").policies.endswith("cache_aware")


def test_workload_shares_documents_and_is_reproducible() -> None:
    args = parse("--prefixes", "3", "--prefix-words", "50", "--requests", "30")
    docs, prompts = kvrouting._workload(1, args)
    assert len(docs) == 3 and len(prompts) == 30
    assert all(any(p.startswith(d + " question ") for d in docs) for p in prompts)
    assert len(set(prompts)) == 30  # each request its own question
    assert kvrouting._workload(1, args) == (docs, prompts)
    assert kvrouting._workload(2, args)[0] != docs  # another policy's run: fresh documents
