# A small Flask app (a WSGI app like any other) for `isola serve` and `isola bench serve`:
#   GET  /      a plain-text greeting
#   GET  /json  a JSON object (jsonify)
#   POST /echo  the length of the request body, as JSON
#   isola serve --chdir examples/serve -w 2 flask_app:app
from flask import Flask, jsonify, request

app = Flask(__name__)


@app.get("/")
def hello():
    return "Hello, World!", 200, {"Content-Type": "text/plain"}


@app.get("/json")
def json_view():
    return jsonify(message="Hello, World!", server="isola")


@app.post("/echo")
def echo():
    body = request.get_data()
    return jsonify(length=len(body))
