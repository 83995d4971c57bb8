"""Small helpers shared by the end-to-end tests."""


def to_argv(args: dict) -> list[str]:
    """{"do_train": True, "learning_rate": 1e-3, "test_file": None} -> ["--do_train", "--learning_rate", "0.001"]."""
    argv = []
    for key, value in args.items():
        if value is True:
            argv.append(f"--{key}")
        elif value is not None:
            argv += [f"--{key}", str(value)]
    return argv
