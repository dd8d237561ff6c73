"""What travels: float32 records, optional float16 uploads, float64 kept exact, bytes as
Flower serializes them."""

import numpy as np
from flwr.common.serde import array_record_to_proto

from multifcl.methods import ClientUpdate
from protocol.messages import (
    ARRAYS,
    content_to_update,
    record_bytes,
    record_to_state,
    state_to_record,
    update_to_content,
)

ROWS = np.random.default_rng(0).standard_normal((100, 256))


def upload(transmit_dtype: str):
    arrays = {
        "class-ids": np.arange(10, dtype=np.int64),
        "class-counts": np.full(10, 3, np.float32),
        "expert-0/prototypes": ROWS.astype(np.float32),
        "gram": ROWS[:3].astype(np.float64),  # exact sums (`analytic`) stay float64
    }
    return update_to_content(ClientUpdate(arrays, 30), transmit_dtype)


def test_floats_travel_as_float32_and_ids_keep_their_type():
    content = upload("float32")
    sent = {key: array.dtype for key, array in content[ARRAYS].items()}
    assert sent == {
        "class-ids": "int64",
        "class-counts": "float32",
        "expert-0/prototypes": "float32",
        "gram": "float64",
    }
    received = content_to_update(content).arrays
    np.testing.assert_array_equal(received["gram"], ROWS[:3])
    np.testing.assert_array_equal(received["expert-0/prototypes"], ROWS.astype(np.float32))
    assert received["class-ids"].dtype == np.int64


def test_float16_uploads_halve_the_bytes_and_arrive_as_float32():
    full, half = upload("float32"), upload("float16")
    assert half[ARRAYS]["expert-0/prototypes"].dtype == "float16"
    received = content_to_update(half).arrays
    assert received["expert-0/prototypes"].dtype == np.float32
    np.testing.assert_allclose(received["expert-0/prototypes"], ROWS, rtol=1e-3, atol=1e-3)
    np.testing.assert_array_equal(received["class-ids"], np.arange(10))
    np.testing.assert_array_equal(received["gram"], ROWS[:3])  # float64 is never rounded
    ratio = record_bytes(half[ARRAYS]) / record_bytes(full[ARRAYS])
    assert 0.5 < ratio < 0.65  # the float payload halves; ids, headers and keys do not


def test_bytes_are_what_flower_serializes():
    record = state_to_record({"a": ROWS.astype(np.float32), "b": np.zeros(3, np.int64)})
    payload = sum(len(array.data) for array in record.values())
    proto = array_record_to_proto(record).ByteSize()
    assert (
        payload < record_bytes(record) < payload + 2048 and abs(record_bytes(record) - proto) < 2048
    )
    twice = state_to_record({"a": ROWS.astype(np.float32), "same": ROWS.astype(np.float32)})
    assert record_bytes(twice) < 1.2 * record_bytes(state_to_record({"a": ROWS.astype(np.float32)}))
    assert record_to_state(twice)["same"].dtype == np.float32


def test_a_float16_run_sends_half_and_clients_report_time_and_memory(tiny_config, tmp_path):
    import csv

    from clients.client_app import train
    from multifcl.metrics.resources import CLIENT_SECONDS, PEAK_RSS_MB
    from tests.conftest import run_in_process

    replies, uploads = [], {}
    for dtype in ("float32", "float16"):
        config = tiny_config(transmit_dtype=dtype, output_dir=tmp_path / dtype)

        def recording(message, context):
            reply = train(message, context)
            replies.append(reply)
            return reply

        run_in_process(config, base_dir=tmp_path, handler=recording)
        rows = list(csv.DictReader((config.output_dir / "rounds.csv").open()))
        uploads[dtype] = sum(int(row["bytes_up"]) for row in rows)
    # d = 64 on the tiny backbone: record headers are a good part of the bytes
    assert 0.5 < uploads["float16"] / uploads["float32"] < 0.85
    assert replies[-1].content[ARRAYS]["class-means"].dtype == "float16"
    metrics = content_to_update(replies[-1].content).metrics
    assert metrics[CLIENT_SECONDS] > 0 and metrics[PEAK_RSS_MB] > 50
