# The peer side, run as `python -I -c <this file> TMPDIR CONFIG_JSON`; prints one JSON
# object on stdout, progress on stderr.

import json
import statistics
import sys
import time

folder, config = sys.argv[1], json.loads(sys.argv[2])
sys.path.insert(0, folder)

import concurrent.futures as cf
import multiprocessing as mp

import isola_bt as tasks

N = config['workers']
repeat = config['repeat']


def progress(message):
    if not config['quiet']:
        print('[pool] ' + message, file=sys.stderr, flush=True)


def check(ok, what):
    if not ok:
        sys.exit(f'bench pool: {what}')


def rate(executor, count):
    t0 = time.perf_counter()
    futures = [executor.submit(tasks.inc, i) for i in range(count)]
    total = 0
    for f in futures:
        total += f.result()
    took = time.perf_counter() - t0
    check(total == count * (count + 1) // 2, f'{executor!r}: wrong sum of inc() results {total}')
    return count / took


def roundtrips(executor, count):
    samples = []
    for i in range(count):
        t0 = time.perf_counter()
        r = executor.submit(tasks.inc, i).result()
        samples.append((time.perf_counter() - t0) * 1e6)
        check(r == i + 1, f'{executor!r}: inc({i}) gave {r!r}')
    return statistics.median(samples)


def cpu(executor, k, n, expected):
    t0 = time.perf_counter()
    futures = [executor.submit(tasks.spin, n) for _ in range(k)]
    results = [f.result() for f in futures]
    took = time.perf_counter() - t0
    check(results == expected, f'{executor!r}: spin() results differ from the serial run')
    return took


def serial(k, n):
    t0 = time.perf_counter()
    results = tasks.spin_serial(k, n)
    return time.perf_counter() - t0, results


out = {}
progress(f'ThreadPoolExecutor({N}): {repeat} runs of {config["thread_tasks"]} trivial tasks')
with cf.ThreadPoolExecutor(N) as ex:
    rate(ex, 1000)
    rates = [rate(ex, config['thread_tasks']) for _ in range(repeat)]
out['threadpool_trivial_tasks_per_s'] = statistics.median(rates)
out['threadpool_roundtrip_us_p50'] = None

# 'forkserver' (the default from 3.14 on) rather than 'fork': no fork of a process that may
# hold threads; the workers are started before anything is timed.
context = mp.get_context('forkserver')
with cf.ProcessPoolExecutor(N, mp_context=context) as ex:
    for f in [ex.submit(tasks.inc, i) for i in range(4 * N)]:
        f.result()
    progress(f'ProcessPoolExecutor({N}, forkserver): {repeat} runs of '
             f'{config["process_tasks"]} trivial tasks')
    rates = [rate(ex, config['process_tasks']) for _ in range(repeat)]
    out['processpool_trivial_tasks_per_s'] = statistics.median(rates)
    progress(f'ProcessPoolExecutor: {config["process_roundtrips"]} round trips')
    roundtrips(ex, 100)
    out['processpool_roundtrip_us_p50'] = roundtrips(ex, config['process_roundtrips'])
    k, n = config['cpu_tasks'], config['spin_n']
    progress(f'ProcessPoolExecutor: {k} CPU-bound tasks vs serial, {config["cpu_rounds"]} rounds')
    par, ser = [], []
    for _ in range(config['cpu_rounds']):
        took, expected = serial(k, n)
        check(expected == [config['spin_expected']] * k,
              f'spin({n}) gave {expected[0]} here, {config["spin_expected"]} in isola')
        ser.append(took)
        par.append(cpu(ex, k, n, expected))
    out['processpool_cpu_parallel_s'] = statistics.median(par)
    out['processpool_cpu_serial_s'] = statistics.median(ser)
    with cf.ThreadPoolExecutor(N) as tex:
        roundtrips(tex, 100)
        out['threadpool_roundtrip_us_p50'] = roundtrips(tex, config['process_roundtrips'])
print(json.dumps(out))
