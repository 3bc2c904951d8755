def spin(n):
    x = 0
    for i in range(n):
        x = (x * 31 + i) % 1000003
    return x

def spin_serial(tasks, n):
    for _ in range(tasks):
        spin(n)

def spin_threads(tasks, n):
    import threading
    threads = [threading.Thread(target=spin, args=(n,)) for _ in range(tasks)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
