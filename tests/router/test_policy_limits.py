import pytest

from router.limits import ConcurrencyLimiter
from router.policy import LimitsPolicy


def test_admits_up_to_max_in_flight_then_queues_then_rejects():
    lim = ConcurrencyLimiter(LimitsPolicy(max_in_flight=2, max_queued=2))
    assert lim.try_acquire() and lim.try_acquire()
    assert not lim.try_acquire()
    assert lim.enqueue("w1") and lim.enqueue("w2")
    assert not lim.enqueue("w3")
    assert (lim.in_flight, lim.queued, lim.rejected) == (2, 2, 1)


def test_release_hands_the_slot_to_exactly_one_waiter_in_fifo_order():
    lim = ConcurrencyLimiter(LimitsPolicy(max_in_flight=1, max_queued=10))
    assert lim.try_acquire()
    for w in ("a", "b", "c"):
        assert lim.enqueue(w)
    assert not lim.try_acquire()  # no jumping the queue
    assert lim.release() == "a"
    assert lim.in_flight == 1 and lim.queued == 2
    assert lim.release() == "b"
    assert lim.release() == "c"
    assert lim.release() is None
    assert lim.in_flight == 0
    assert lim.try_acquire()


def test_cancelled_waiters_are_skipped():
    lim = ConcurrencyLimiter(LimitsPolicy(max_in_flight=1, max_queued=3))
    lim.try_acquire()
    for w in ("a", "b", "c"):
        lim.enqueue(w)
    assert lim.cancel("b") and not lim.cancel("b") and not lim.cancel("zzz")
    assert lim.queued == 2
    assert lim.enqueue("d")  # the cancelled one no longer takes queue room
    assert [lim.release() for _ in range(4)] == ["a", "c", "d", None]


def test_many_cancellations_keep_the_queue_compact():
    lim = ConcurrencyLimiter(LimitsPolicy(max_in_flight=1, max_queued=5))
    lim.try_acquire()
    for k in range(1000):
        lim.enqueue(k)
        lim.cancel(k)
    assert lim.queued == 0 and len(lim._fifo) <= 16
    assert lim.release() is None


def test_zero_queue_rejects_at_once():
    lim = ConcurrencyLimiter(LimitsPolicy(max_in_flight=1, max_queued=0))
    lim.try_acquire()
    assert not lim.enqueue("w") and lim.rejected == 1


def test_misuse_is_reported():
    lim = ConcurrencyLimiter(LimitsPolicy(max_in_flight=1, max_queued=2))
    with pytest.raises(RuntimeError, match="without a matching acquire"):
        lim.release()
    lim.try_acquire()
    lim.enqueue("w")
    with pytest.raises(ValueError, match="already queued"):
        lim.enqueue("w")


def test_resize_admits_waiters_when_the_limit_grows():
    lim = ConcurrencyLimiter(LimitsPolicy(max_in_flight=1, max_queued=5))
    lim.try_acquire()
    for w in ("a", "b", "c"):
        lim.enqueue(w)
    assert lim.resize(LimitsPolicy(max_in_flight=3, max_queued=5)) == ["a", "b"]
    assert (lim.in_flight, lim.queued) == (3, 1)
    assert lim.resize(LimitsPolicy(max_in_flight=1, max_queued=5)) == []
    assert lim.release() == "c" and lim.in_flight == 3  # shrinking takes effect as requests end
    assert lim.snapshot() == {"in_flight": 3, "queued": 0, "max_in_flight": 1, "max_queued": 5, "rejected": 0}
