"""The error every frontend raises for a model it cannot take in."""


class FrontendError(ValueError):
    """A model from another framework cannot be converted faithfully; the message names the file,
    the operator(s) and node(s), or the outputs that disagree."""
