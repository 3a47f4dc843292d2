raise RuntimeError("brokenapp.actors is broken on purpose")
