# The smallest WSGI (PEP 3333) app: 13 bytes of text per request. What `isola bench serve`
# measures a server's own overhead with.
#   isola serve --chdir examples/serve hello:app

BODY = b"Hello, World!"
HEADERS = [("Content-Type", "text/plain"), ("Content-Length", str(len(BODY)))]


def app(environ, start_response):
    start_response("200 OK", list(HEADERS))
    return [BODY]
