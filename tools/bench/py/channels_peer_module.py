# Helpers the multiprocessing peer imports by name (its children must find them in a module
# file: the script itself runs with -c).

def mp_send_ints(q, ready, go, n):
    ready.set()
    go.wait()
    put = q.put
    for i in range(n):
        put(i)
