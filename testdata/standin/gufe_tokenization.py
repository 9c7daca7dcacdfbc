# A stand-in for gufe.tokenization, for tests of the Python drivers in environments
# without gufe (CI): keyed chains are rebuilt generically, each object an instance of
# the class its __module__/__qualname__ name when that can be imported (else Generic),
# its members set from its keyed dict, references replaced by the objects they name.
import importlib, json


class _Handler:
    decoder = json.JSONDecoder
    encoder = json.JSONEncoder


JSON_HANDLER = _Handler()


class GufeKey(str):
    pass


def _resolve(value, objects):
    if isinstance(value, dict):
        if list(value) == [":gufe-key:"]:
            return objects[value[":gufe-key:"]]
        return {k: _resolve(v, objects) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(v, objects) for v in value]
    return value


class GufeTokenizable:
    @classmethod
    def from_keyed_chain(cls, chain):
        objects, obj = {}, None
        for key, d in chain:
            d = _resolve(d, objects)
            try:
                klass = getattr(importlib.import_module(d["__module__"]), d["__qualname__"])
            except (ImportError, AttributeError):
                klass = Generic
            obj = klass.__new__(klass)
            obj.__dict__.update({k: v for k, v in d.items() if not k.startswith("__") and not k.startswith(":")})
            obj.key = GufeKey(key)
            objects[key] = obj
        return obj


class Generic(GufeTokenizable):
    pass
