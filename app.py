"""The axw playground (Gradio). Built on top of the library in axw/."""

if __name__ == "__main__":
    raise SystemExit("the playground is not built yet: see the README")
