"""Chained block hashes: the one definition the engine's events and the gateway's
prefix look-ups must agree on."""

from __future__ import annotations

from common.hashing import block_hashes, hash_block, root_hash

BS = 16
TOKENS = list(range(1000, 1000 + 5 * BS))  # five full blocks


def test_only_full_blocks_are_hashed():
    assert len(block_hashes(TOKENS[:BS - 1], BS)) == 0
    assert len(block_hashes(TOKENS[:BS], BS)) == 1
    assert len(block_hashes(TOKENS[:2 * BS + 5], BS)) == 2
    # A trailing partial block never changes the hashes of the full blocks before it.
    assert block_hashes(TOKENS[:2 * BS + 5], BS) == block_hashes(TOKENS[:2 * BS], BS)
    assert block_hashes(TOKENS[:2 * BS] + [7, 7, 7], BS) == block_hashes(TOKENS[:2 * BS], BS)


def test_same_prefix_gives_same_hashes_and_divergence_changes_the_rest():
    a = TOKENS[:3 * BS] + [1] * BS
    b = TOKENS[:3 * BS] + [2] * BS
    ha, hb = block_hashes(a, BS), block_hashes(b, BS)
    assert ha[:3] == hb[:3]
    assert ha[3] != hb[3]
    # Changing one token of block 1 changes block 1 and, through the chain, every block after it.
    c = list(a)
    c[BS + 3] += 1
    hc = block_hashes(c, BS)
    assert hc[0] == ha[0]
    assert all(x != y for x, y in zip(hc[1:], ha[1:]))


def test_hash_depends_on_position_in_chain_not_only_on_block_tokens():
    # Two identical blocks at different positions have different hashes.
    same = [5] * (2 * BS)
    h = block_hashes(same, BS)
    assert h[0] != h[1]
    # Token order inside a block matters.
    assert hash_block(0, [1, 2] + [0] * (BS - 2)) != hash_block(0, [2, 1] + [0] * (BS - 2))


def test_salt_changes_every_hash():
    plain = block_hashes(TOKENS, BS)
    salted = block_hashes(TOKENS, BS, salt="tenant-a")
    other = block_hashes(TOKENS, BS, salt="tenant-b")
    assert len(plain) == len(salted) == len(other) == 5
    assert all(p != s for p, s in zip(plain, salted))
    assert all(s != o for s, o in zip(salted, other))
    assert not set(plain) & set(salted)
    # The same salt reproduces the same chain; str and bytes salts agree.
    assert block_hashes(TOKENS, BS, salt="tenant-a") == salted
    assert block_hashes(TOKENS, BS, salt=b"tenant-a") == salted


def test_no_salt_and_empty_salt_start_from_the_same_root():
    assert root_hash(None) == root_hash("") == root_hash(b"") == 0
    assert root_hash("x") != 0
    assert block_hashes(TOKENS, BS, salt="") == block_hashes(TOKENS, BS)


def test_parent_continues_a_chain():
    full = block_hashes(TOKENS, BS)
    head = block_hashes(TOKENS[:2 * BS], BS)
    tail = block_hashes(TOKENS[2 * BS:], BS, parent=head[-1])
    assert head + tail == full
    salted = block_hashes(TOKENS, BS, salt="s")
    assert block_hashes(TOKENS[BS:], BS, salt="ignored-when-parent-given", parent=salted[0]) == salted[1:]


def test_hashes_are_unsigned_64_bit_and_accept_large_token_ids():
    ids = [2**40 + i for i in range(BS)]
    (h,) = block_hashes(ids, BS)
    assert 0 <= h < 2**64
    assert h != block_hashes([i % 2**32 for i in ids], BS)[0]
    assert all(0 <= x < 2**64 for x in block_hashes(TOKENS, BS, salt="s"))
