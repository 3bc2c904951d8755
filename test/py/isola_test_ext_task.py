"""Tasks for the extension-policy tests: each imports one of the suite's extension modules."""


def use_single():
    import isola
    import isola_ext_single
    return [isola.extension_policy(), isola_ext_single.bump() > 0]


def policy():
    import isola
    return isola.extension_policy()
