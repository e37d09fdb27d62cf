"""placeholder"""
def available(): return {}
def get_backend(name): raise NotImplementedError
