"""Writes a C++ header that holds a text file (a Python module isola runs) as a string.

usage: embed.py INPUT OUTPUT NAME

The header defines isola::embedded::NAME, a constexpr char array with the file's text as a raw
string literal, so the Python lives in .py files that are read, linted and edited as Python.
"""
import sys


def main():
    if len(sys.argv) != 4:
        sys.exit(__doc__)
    source, output, name = sys.argv[1:]
    with open(source, encoding='utf-8') as f:
        text = f.read()
    delimiter = 'isola_py'
    while ')' + delimiter + '"' in text:
        delimiter += '_'
    with open(output, 'w', encoding='utf-8') as f:
        f.write(f'// Generated from {source} by tools/build/embed.py: edit that file, not this one.\n'
                '#pragma once\n\n'
                'namespace isola::embedded {\n'
                f'inline constexpr char {name}[] = R"{delimiter}({text}){delimiter}";\n'
                '}  // namespace isola::embedded\n')


if __name__ == '__main__':
    main()
