"""Writes python_hashes.jsonl: users whose hashes Python's `bcrypt` and `argon2-cffi` made,
for tests/it/import.rs (the hashes of another system, not of the crates gatehouse uses).

Made once and committed; to make it again:

    python3 -m venv /tmp/imp-venv && /tmp/imp-venv/bin/pip install bcrypt argon2-cffi
    /tmp/imp-venv/bin/python tests/data/make_python_fixtures.py > tests/data/python_hashes.jsonl

Costs are low so the debug-build tests stay fast (bcrypt cost 4; argon2id m=1024 KiB, t=2,
p=2); the schemes and encodings are what these libraries write at any cost. Each user's
password is in its `name`, which the test reads back.
"""

import json

import argon2
import bcrypt

lines = [
    {
        "email": "py.bcrypt@example.com",
        "username": "pybcrypt",
        "name": "bcrypt 2b python passphrase",
        "roles": ["reader"],
        "email_verified": True,
        "password_hash": bcrypt.hashpw(
            b"bcrypt 2b python passphrase", bcrypt.gensalt(rounds=4)
        ).decode(),
    },
    {
        "email": "py.bcrypt2a@example.com",
        "name": "bcrypt 2a python passphrase",
        "password_hash": bcrypt.hashpw(
            b"bcrypt 2a python passphrase", bcrypt.gensalt(rounds=4, prefix=b"2a")
        ).decode(),
    },
    {
        "email": "py.argon2@example.com",
        "name": "argon2-cffi python passphrase",
        "password_hash": argon2.PasswordHasher(
            time_cost=2, memory_cost=1024, parallelism=2
        ).hash("argon2-cffi python passphrase"),
    },
]
for line in lines:
    print(json.dumps(line))
