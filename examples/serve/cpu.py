# A WSGI (PEP 3333) app that does about 2 ms of pure-Python work per request (2.0 ms with
# CPython 3.13.0 on a 2-vCPU Xeon VM, `python3.13 -m timeit -s "from cpu import work"
# "work()"`), then answers with a short text body. Under load it shows whether a server runs
# Python code on more than one core at once.
#   isola serve --chdir examples/serve -w 2 cpu:app

ITERATIONS = 32_000  # ~2 ms of work() on the machine above


def work(n=ITERATIONS):
    total = 0
    for i in range(n):
        total += i * i % 7
    return total


def app(environ, start_response):
    body = b"%d\n" % work()
    start_response("200 OK", [("Content-Type", "text/plain"),
                              ("Content-Length", str(len(body)))])
    return [body]
