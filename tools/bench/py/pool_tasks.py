# The module both sides call (a short name: "isola_bt:inc" fits std::string's small buffer,
# so submit() allocates no string for it).

def inc(x):
    return x + 1


def spin(n):
    x = 0
    for i in range(n):
        x = (x * 31 + i) % 1000003
    return x


def spin_serial(tasks, n):
    return [spin(n) for _ in range(tasks)]
