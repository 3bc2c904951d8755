# The peers, run as `python -I -c <this file> TMPDIR CONFIG_JSON`; one JSON object on stdout.

import json
import statistics
import sys
import threading
import time

folder, config = sys.argv[1], json.loads(sys.argv[2])
sys.path.insert(0, folder)

import multiprocessing as mp

import isola_bc

N = config['messages']
repeat = config['repeat']
out = {}


def progress(message):
    if not config['quiet']:
        print('[channels] peers: ' + message, file=sys.stderr, flush=True)


def check(ok, what):
    if not ok:
        sys.exit(f'bench channels: {what}')


# ---- CPython's cross-interpreter queues (PEP 734's API) -------------------------------------
try:
    from test.support import interpreters
    from test.support.interpreters import queues
except ImportError as e:
    interpreters = None
    out['cpython_queue_skipped'] = (
        f'test.support.interpreters.queues is not importable on Python '
        f'{sys.version.split()[0]} ({e}); it exists from 3.13 on')

SENDER = '''
import time
from test.support.interpreters import queues

def send_ints(qid, n):
    put = queues.Queue(qid).put
    for i in range(n):
        put(i)

def recv_big(qid, rid):
    data = queues.Queue(qid).get()
    last = data[-1]
    queues.Queue(rid).put((time.perf_counter_ns(), last, len(data)))
'''


def run_in(interp, code, q):
    try:
        interp.exec(code)
    except BaseException as e:
        print(f'bench channels: the sending interpreter failed: {e}', file=sys.stderr)
        q.put(None)  # ends the receiving loop with a TypeError


def queue_ints(interp, n):
    q = queues.create(syncobj=True)  # ints are shareable: no pickling
    t = threading.Thread(target=run_in, args=(interp, f'send_ints({q.id}, {n})', q))
    get = q.get
    total = 0
    t0 = time.perf_counter()
    t.start()
    for _ in range(n):
        total += get()
    took = time.perf_counter() - t0
    t.join()
    check(total == n * (n - 1) // 2, f'CPython queue: wrong sum {total}')
    return n / took


def queue_big(interp, size):
    # put() here, then get() in the other interpreter: the time of both plus the switch.
    data = bytes(size - 1) + b'\x07'
    q, r = queues.create(syncobj=True), queues.create(syncobj=True)
    t0 = time.perf_counter_ns()
    q.put(data)
    interp.exec(f'recv_big({q.id}, {r.id})')
    t1, last, length = r.get()
    check(last == 7 and length == size, f'CPython queue: 100 MB arrived as {length} bytes')
    return (t1 - t0) / 1e6


def queue_costs(rounds, n):
    # CPU time per put(i) / get() in one thread that never waits, loop included: the peer of
    # isola's py_send_ns_cpu / py_recv_ns_cpu.
    q = queues.create(syncobj=True)
    put, get, now = q.put, q.get, time.thread_time_ns
    r = range(n)
    puts = gets = 0
    for _ in range(rounds):
        t0 = now()
        for i in r:
            put(i)
        t1 = now()
        for _ in r:
            get()
        t2 = now()
        puts += t1 - t0
        gets += t2 - t1
    return puts / (rounds * n), gets / (rounds * n)


if interpreters is not None:
    queue_costs(2, config['cost_loop'])
    out['cpython_queue_put_ns_cpu'], out['cpython_queue_get_ns_cpu'] = queue_costs(
        config['cost_rounds'], config['cost_loop'])
    progress(f'CPython queues: CPU time per put(i) {out["cpython_queue_put_ns_cpu"]:.1f} ns, '
             f'get() {out["cpython_queue_get_ns_cpu"]:.1f} ns, one thread')
    interp = interpreters.create()
    interp.exec(SENDER)
    progress(f'CPython queues (test.support.interpreters.queues, syncobj=True): '
             f'{repeat} runs of {N} ints, one interpreter to another')
    queue_ints(interp, min(N, 10000))
    rates = []
    for k in range(repeat):
        rates.append(queue_ints(interp, N))
        progress(f'  run {k + 1}/{repeat}: {rates[-1]:.0f} msgs/s')
    out['cpython_queue_msgs_per_s_int'] = statistics.median(rates)
    size = config['big_bytes']
    progress(f'CPython queues: {config["big_rounds"]} transfers of {size >> 20} MiB of bytes')
    out['cpython_queue_100mb_ms'] = statistics.median(
        [queue_big(interp, size) for _ in range(config['big_rounds'])])
    interp.close()


# ---- multiprocessing.Queue between two processes --------------------------------------------
def mp_ints(context, n):
    q, ready, go = context.Queue(), context.Event(), context.Event()
    p = context.Process(target=isola_bc.mp_send_ints, args=(q, ready, go, n))
    p.start()
    check(ready.wait(60), 'multiprocessing: the sending process did not start')
    get = q.get
    total = 0
    t0 = time.perf_counter()
    go.set()
    for _ in range(n):
        total += get()
    took = time.perf_counter() - t0
    p.join()
    check(p.exitcode == 0, f'multiprocessing: the sending process exited with {p.exitcode}')
    check(total == n * (n - 1) // 2, f'multiprocessing.Queue: wrong sum {total}')
    return n / took


# 'forkserver' (the default from 3.14 on): no fork of a process that may hold threads.
context = mp.get_context('forkserver')
progress(f'multiprocessing.Queue (forkserver): {repeat} runs of {N} ints, one process to another')
mp_ints(context, min(N, 10000))
rates = []
for k in range(repeat):
    rates.append(mp_ints(context, N))
    progress(f'  run {k + 1}/{repeat}: {rates[-1]:.0f} msgs/s')
out['mp_queue_msgs_per_s_int'] = statistics.median(rates)
print(json.dumps(out))
