"""The request corpus of the parser-differential test.

Every corpus class is a generator function registered with @corpus_class; it yields
Req values. A Req is exact bytes for HTTP/1.1 (the request line's method and target are
sent as given, never normalised by a client library) and, when `protos` names "h2", the
same method and target as `:method`/`:path` over HTTP/2.

Placeholders, filled in per gatehouse instance by the driver:
  {HOSTPORT}  the 127.0.0.1:PORT of the gatehouse the request is sent to

A Req with `needs` goes only to the upstreams that have that feature ("unicode-routes":
admin handlers at /api/σettings and /api/μsvc, which gatehouse's test policy protects).

To add a class: write a generator below, decorate it, and yield Req(...) values. `check`
chooses the verdict: "admin" (the default; a violation is a 2xx carrying the admin marker
for a caller without the admin role, or any `forbid` string in the echoed response) or
"chunked" (gatehouse must answer 4xx, never 5xx or no answer, and never forward).
"""

from __future__ import annotations

import dataclasses
import itertools
import random
from dataclasses import dataclass

CLASSES: dict[str, object] = {}


def corpus_class(name):
    def register(fn):
        CLASSES[name] = fn
        return fn

    return register


@dataclass(frozen=True)
class Req:
    cls: str
    label: str
    method: bytes
    target: bytes
    headers: tuple = ()  # extra (name, value) byte pairs in this order; value None = raw line
    body: bytes = b""
    chunked: bool = False  # body is already chunk-encoded: send Transfer-Encoding: chunked
    host: bytes | None = None  # Host header value; None = the gatehouse's {HOSTPORT}
    half_close: bool = False  # shut the write side after sending (truncated bodies)
    forbid: tuple = ()  # byte strings that must never appear in the upstream's echo
    protos: tuple = ("h1",)
    check: str = "admin"
    h2_pseudo: tuple = ()  # HTTP/2 only: extra pseudo-headers after the standard four
    h2_authority: bytes | None = None
    needs: str | None = None  # sent only to upstreams with this feature (differential.Upstream)


ADMIN = "/api/admin"


def case_variants(word):
    """Every upper/lower spelling of word's letters (2**letters of them)."""
    choices = [(c.lower(), c.upper()) if c.isalpha() else (c,) for c in word]
    return ["".join(p) for p in itertools.product(*choices)]


def pct(ch, lower_hex=False):
    """%XX of every UTF-8 byte of ch."""
    out = "".join(f"%{b:02X}" for b in ch.encode("utf-8"))
    return out.lower() if lower_hex else out


def get(cls, label, target, **kw):
    return Req(cls, label, b"GET", target.encode("latin-1") if isinstance(target, str) else target, **kw)


def delete(cls, label, target, **kw):
    return Req(cls, label, b"DELETE", target.encode("latin-1") if isinstance(target, str) else target, **kw)


# --- path spellings --------------------------------------------------------------------------


@corpus_class("case")
def case_class():
    for api in case_variants("api"):
        for admin in case_variants("admin"):
            if (api, admin) != ("api", "admin"):
                yield get("case", f"/{api}/{admin}", f"/{api}/{admin}")
    for admin in case_variants("admin")[1:]:
        yield get("case", f"sub /api/{admin}/users", f"/api/{admin}/users")
    for t in ["/API/ADMIN/", "/Api/Admin/", "/api/Admin/Users", "/API/ADMIN/USERS/"]:
        yield get("case", t, t)
    for items in case_variants("items")[1:]:
        yield delete("case", f"DELETE /api/{items}/1", f"/api/{items}/1")
    for api in case_variants("api")[1:]:
        yield delete("case", f"DELETE /{api}/items/1", f"/{api}/items/1")
        yield delete("case", f"DELETE /{api}/ITEMS/1", f"/{api}/ITEMS/1")


@corpus_class("pct-encode")
def pct_encode_class():
    seen = set()
    for word_at, (word, other) in enumerate([("api", "admin"), ("admin", "api")]):
        for i, ch in enumerate(word):
            for letter in (ch.lower(), ch.upper()):
                for lower_hex in (False, True):
                    for rest_upper in (False, True):
                        spelled = list(word.upper() if rest_upper else word)
                        spelled[i] = pct(letter, lower_hex)
                        w = "".join(spelled)
                        t = f"/{w}/{other}" if word_at == 0 else f"/{other}/{w}"
                        if t not in seen:
                            seen.add(t)
                            yield get("pct-encode", t, t)
    for t in [
        "/%61%70%69/%61%64%6D%69%6E", "/%61%70%69/%61%64%6d%69%6e", "/api/%41%44%4D%49%4E",
        "/api/%41%64%4D%69%4E", "/%41%50%49/%41%44%4D%49%4E", "/%41pi/%41dmin",
        "/api/%61dmin/users", "/api/%41DMIN/users", "/api/admin/%75sers", "/api/%41dmin/",
        "/%2fapi/admin",
    ]:
        if t not in seen:
            seen.add(t)
            yield get("pct-encode", t, t)
    for t in ["/api/%69tems/1", "/api/%49TEMS/1", "/api/%49tems/1", "/api/items/%31",
              "/api/%69%74%65%6D%73/1", "/api/%49%54%45%4D%53/1", "/%41PI/items/1",
              "/api/ite%6Ds/1", "/api/ite%6ds/1"]:
        yield delete("pct-encode", f"DELETE {t}", t)


@corpus_class("double-encode")
def double_encode_class():
    for t in ["/api/%2561dmin", "/api/%2541DMIN", "/api/%25%36%31dmin", "/api/%25%34%31DMIN",
              "/api/%2561%2564%256d%2569%256e", "/api/%252561dmin", "/api/public/%252e%252e/admin",
              "/api/public/%252E%252E/admin", "/api/public/%25%32%65%25%32%65/admin",
              "/api%252fadmin", "/api%252Fadmin", "/api/admin%250A", "/api/admin%2500",
              "/%2561pi/admin", "/api/%2525%2536%2531dmin"]:
        yield get("double-encode", t, t)
    for t in ["/api/%2569tems/1", "/api/%2549TEMS/1", "/api/items/1%250A"]:
        yield delete("double-encode", f"DELETE {t}", t)


CONTROL_CODES = list(range(0x00, 0x20)) + [0x7F]


@corpus_class("ctl-encoded")
def ctl_encoded_class():
    for code in CONTROL_CODES:
        hexes = {f"%{code:02X}", f"%{code:02x}"}
        for h in sorted(hexes):
            yield get("ctl-encoded", f"append {h}", f"/api/admin{h}")
            yield delete("ctl-encoded", f"DELETE append {h}", f"/api/items/1{h}")
            if h != f"%{code:02X}":
                continue  # the other positions with upper-case hex only
            yield get("ctl-encoded", f"after slash {h}", f"/api/admin/{h}")
            yield get("ctl-encoded", f"inside {h}", f"/api/ad{h}min")
            yield get("ctl-encoded", f"before {h}", f"/api/{h}admin")
            yield get("ctl-encoded", f"after api {h}", f"/api{h}/admin")
            yield get("ctl-encoded", f"segment {h}", f"/api/admin{h}/users")
            yield get("ctl-encoded", f"sub append {h}", f"/api/admin/users{h}")
            yield delete("ctl-encoded", f"DELETE items {h}", f"/api/items{h}/1")
    for t in ["/api/admin%0D%0A", "/api/admin%0A%0A", "/api/admin%20%0A", "/api/admin%0A%20",
              "/api/admin%0A/", "/api/admin%0Ax", "/api/admin%0A?x=1", "/api/admin%0A.json",
              "/API/ADMIN%0A", "/api/%41DMIN%0A", "/api/admin%0A%00", "/api/admin%E2%80%A8",
              "/api/admin%E2%80%A9", "/api/admin%C2%85"]:
        yield get("ctl-encoded", f"combo {t}", t)


RAW_BYTES = CONTROL_CODES + [0x20, 0x80, 0x85, 0xA0, 0xC0, 0xFF]


@corpus_class("ctl-raw")
def ctl_raw_class():
    for code in RAW_BYTES:
        b = bytes([code])
        yield Req("ctl-raw", f"append raw {b!r}", b"GET", b"/api/admin" + b)
        yield Req("ctl-raw", f"inside raw {b!r}", b"GET", b"/api/ad" + b + b"min")
    for code in [0x00, 0x09, 0x0A, 0x0B, 0x0C, 0x0D, 0x20, 0x7F, 0x85, 0xA0]:
        b = bytes([code])
        yield Req("ctl-raw", f"DELETE append raw {b!r}", b"DELETE", b"/api/items/1" + b)
    # Request lines split by unusual whitespace: which token does each parser take as the
    # target?
    for line_target in [b"/api/admin x", b"/api/admin\tx", b"/api/public /api/admin", b"/api/admin  ",
                        b"/api/public\x0b/api/admin", b"/api/public\x0c/api/admin"]:
        yield Req("ctl-raw", f"split target {line_target!r}", b"GET", line_target)


@corpus_class("trailing")
def trailing_class():
    suffixes = [".", "..", "...", "%2E", "%2e", "%2E%2E", "%20", "%09", "/", "//", "/.", "/%2E",
                "~", "%7E", "-", "_", "%5F", ".json", ".html", "%2Ejson", "%3F", "%3Fx", "%23",
                "*", "%2A", "%FF", "%C0", ".%20", "%20.", "%E3%80%80", "%C2%A0", "./", "%2E/", ".xml", ".JSON",
                ".json/", "%2Exml"]
    for s in suffixes:
        yield get("trailing", f"admin{s}", f"/api/admin{s}")
    for s in [".", "%20", "%2E", "/", "~", "%09"]:
        yield get("trailing", f"api{s}/admin", f"/api{s}/admin")
        yield get("trailing", f"users{s}", f"/api/admin/users{s}")
        yield delete("trailing", f"DELETE items/1{s}", f"/api/items/1{s}")
        yield delete("trailing", f"DELETE items{s}/1", f"/api/items{s}/1")


@corpus_class("unicode-u")
def unicode_u_class():
    for t in ["/api/%u0061dmin", "/api/%U0061dmin", "/api/%u0041DMIN", "/api/adm%u0069n",
              "/api/%u0061%u0064%u006d%u0069%u006e", "/api/%u0041%u0044%u004D%u0049%u004E",
              "/%u0061pi/admin", "/api/public/%u002e%u002e/admin", "/api%u002fadmin",
              "/api%u2215admin", "/api/admin%u000a", "/api/admin%u000A", "/api/%uFF41dmin",
              "/api/admin%u002Ejson", "/api/adm%u0131n"]:
        yield get("unicode-u", t, t)
    yield delete("unicode-u", "DELETE %u0069tems", "/api/%u0069tems/1")


@corpus_class("matrix")
def matrix_class():
    for t in ["/api/admin;x", "/api/admin;", "/api/admin;/", "/api/admin;x/users", "/api;x/admin",
              "/api;/admin", "/api/public;/../admin", "/api/public/..;/admin", "/api/admin%3Bx",
              "/api/admin%3b", "/;/api/admin", "/api/admin;jsessionid=1", "/api/ad;min",
              "/api/admin;%0A", "/api/admin%3B%0A", "/api/admin,x", "/api/admin%2C"]:
        yield get("matrix", t, t)
    for t in ["/api/items/1;x", "/api/items;/1", "/api/items/1%3Bx"]:
        yield delete("matrix", f"DELETE {t}", t)


@corpus_class("fragment")
def fragment_class():
    for t in ["/api/admin#x", "/api/public#/../admin", "/api/admin%23x", "/api/public%23/../admin",
              "/api/admin#", "/api/public/..#/admin", "/api/admin#%0A", "/api/admin?#"]:
        yield get("fragment", t, t)
    yield delete("fragment", "DELETE items/1#x", "/api/items/1#x")


@corpus_class("overlong")
def overlong_class():
    for t in ["/api/public/%C0%AE%C0%AE/admin", "/api/public/%c0%ae%c0%ae/admin",
              "/api/public/%C0%AE%C0%AE%C0%AFadmin", "/api%C0%AFadmin", "/api%c0%afadmin",
              "/api/public/%E0%80%AE%E0%80%AE/admin", "/api/public/%C0%2E%C0%2E/admin",
              "/api/public/%C0%AE./admin", "/api/%C1%A1dmin", "/api/%C1%81DMIN", "/api/%E0%81%A1dmin",
              "/api/%F0%80%81%A1dmin", "/api/admin%C0%80", "/api/admin%C0%8A", "/api/admin%E0%80%8A",
              "/api%E0%80%AFadmin", "/api%C0%5Cadmin", "/api%C1%9Cadmin", "/api/%C0%AE/admin",
              "/api/public/%F0%80%80%AE%F0%80%80%AE/admin"]:
        yield get("overlong", t, t)
    for t in ["/api/%C1%A9tems/1", "/api/items/1%C0%8A", "/api/x/%C0%AE%C0%AE/items/1"]:
        yield delete("overlong", f"DELETE {t}", t)


# Look-alikes that Unicode case folding or NFKC turns into ASCII letters of admin/api/items.
FOLDS = {
    "a": ["\uff41", "\uff21", "\u00aa", "\u0251"],
    "d": ["\uff44", "\uff24"],
    "m": ["\uff4d", "\uff2d"],
    "i": ["\u0131", "\u0130", "\uff49", "\uff29", "\u2170"],
    "n": ["\uff4e", "\uff2e", "\u207f"],
    "p": ["\uff50", "\uff30"],
    "s": ["\u017f", "\uff53"],
    "k": ["\u212a"],
    "t": ["\uff54"],
    "e": ["\uff45"],
}


@corpus_class("unicode-fold")
def unicode_fold_class():
    def spellings(word, prefix, suffix, method):
        for i, ch in enumerate(word):
            for alt in FOLDS.get(ch, []):
                for how in ("pct", "pct-lower", "raw"):
                    if how == "raw":
                        w = (word[:i] + alt + word[i + 1:]).encode("utf-8")
                    else:
                        w = (word[:i] + pct(alt, how == "pct-lower") + word[i + 1:]).encode("ascii")
                    t = prefix + w + suffix
                    yield Req("unicode-fold", f"{method.decode()} {word}[{i}]=U+{ord(alt):04X} {how}", method, t)

    yield from spellings("admin", b"/api/", b"", b"GET")
    yield from spellings("api", b"/", b"/admin", b"GET")
    yield from spellings("items", b"/api/", b"/1", b"DELETE")
    yield from spellings("users", b"/api/admin/", b"", b"GET")
    for word in ["\uff41\uff44\uff4d\uff49\uff4e", "\uff21\uff24\uff2d\uff29\uff2e", "adm\u0131n", "ADM\u0130N"]:
        yield get("unicode-fold", f"whole {word!r} pct", "/api/" + pct(word))
        yield Req("unicode-fold", f"whole {word!r} raw", b"GET", b"/api/" + word.encode("utf-8"))
    yield get("unicode-fold", "kelvin keys", "/api/admin/" + pct("\u212a") + "eys")
    yield get("unicode-fold", "ſ in public?", "/api/admin" + pct("\u017f"))


@corpus_class("dot-segments")
def dot_segments_class():
    for t in ["/api/public/../admin", "/api/x/../admin", "/api/./admin", "/./api/admin", "/api/admin/.",
              "/api/admin/./", "/api/admin/users/..", "/api/admin/x/../", "/api/public/%2e%2e/admin",
              "/api/public/%2E%2E/admin", "/api/public/.%2e/admin", "/api/public/%2e./admin",
              "/api/public/..%2fadmin", "/api/public/..%2Fadmin", "/api/public/..%5cadmin",
              "/api/public/..\\admin", "/api/public/.../admin", "/api/public/...../admin",
              "/api/%2e/admin", "/x/../api/admin", "/../api/admin", "/api/../../api/admin",
              "/api/public/..%00/admin", "/api/public/%2e%2e%2fadmin", "/api/public/..%09/admin",
              "/api/public/..%0A/admin", "/api/public/%2e%2e%0A/admin", "/api/public/. ./admin",
              "/api/public/%20../admin", "/api/admin/..", "/api/admin/%2e%2e", "/api/public/..",
              "/api/pub/../ADMIN", "/api/x/%2E%2E/%41dmin"]:
        yield get("dot-segments", t, t)
    for t in ["/api/x/../items/1", "/api/items/x/../1", "/api/items/./1", "/api/public/../items/1",
              "/api/items/1/.", "/api/items/1/x/.."]:
        yield delete("dot-segments", f"DELETE {t}", t)


@corpus_class("slashes")
def slashes_class():
    for t in ["//api/admin", "/api//admin", "///api///admin", "/api/admin//", "/api//admin//users",
              "\\api\\admin", "/api\\admin", "/api%5Cadmin", "/api%5cadmin", "/api%2Fadmin",
              "/api%2fadmin", "%2Fapi%2Fadmin", "/api/%2Fadmin", "//api%2Fadmin", "/api/admin%2F",
              "/api/admin%2Fusers", "/api/public%2F..%2Fadmin", "/api/public/..%2F..%2Fapi/admin",
              "/\\/api/admin", "/api/\\admin", "//api//ADMIN"]:
        yield get("slashes", t, t)
    for t in ["//api/items/1", "/api//items//1", "/api/items%2F1", "/api\\items\\1"]:
        yield delete("slashes", f"DELETE {t}", t)


@corpus_class("absolute-form")
def absolute_form_class():
    same = "http://{HOSTPORT}"
    for t in [same + "/api/admin", same + "/API/ADMIN", "HTTP://{HOSTPORT}/api/admin",
              same + "//api/admin", same + "/api/public/../admin", same + "/api/admin%0A",
              same + "/api/%41DMIN", "https://{HOSTPORT}/api/admin", "http://user@{HOSTPORT}/api/admin",
              "http://{HOSTPORT}@127.0.0.2:1/api/admin", "http://127.0.0.2:1/api/admin",
              "http://127.0.0.1/api/admin", "http://{HOSTPORT}", "http://{HOSTPORT}?x=/api/admin",
              "*", "api/admin", "http:/api/admin", "//{HOSTPORT}/api/admin",
              "http://{HOSTPORT}/api/public#/../admin", "http://[::1]:1/api/admin"]:
        yield get("absolute-form", t, t)
    # Host header naming another host than the target (and than the listener).
    yield get("absolute-form", "Host other, origin form", "/api/admin", host=b"127.0.0.2:1")
    yield get("absolute-form", "Host other, absolute target", same + "/api/admin", host=b"127.0.0.2:1")
    for t in [same + "/api/items/1", same + "/API/ITEMS/1", same + "/api/items/1%0A"]:
        yield delete("absolute-form", f"DELETE {t}", t)


@corpus_class("format-suffix")
def format_suffix_class():
    """Rails routes `/api/admin(.:format)` to the admin handler and
    `DELETE /api/items/:id(.:format)` to the delete one; Spring's suffix patterns did too."""
    for t in ["/api/admin.json", "/api/admin.xml", "/api/admin.html", "/api/admin.JSON", "/api/admin.json/",
              "/api/admin.xml//", "/api/admin.tar.gz", "/api/admin.j", "/api/admin.json.", "/api/admin..json",
              "/api/admin.json.json", "/api/ADMIN.xml", "/api/Admin.json", "/API/ADMIN.JSON", "/API/ADMIN.json/",
              "/api/%41DMIN.json", "/api/%61dmin.json", "/api/admin%2Ejson", "/api/admin%2ejson/",
              "/api/admin.%6Ason", "/api/admin.%4A%53%4F%4E", "/api/admin.json?x=1", "/api/admin.json?format=json",
              "//api/admin.json", "/api//admin.json", "/api/public/../admin.json", "/api/x/%2E%2E/admin.json",
              "/api/admin/users.json", "/api/admin/users.json/", "/api/admin.json/users", "/api/admin.json%20",
              "/api/admin.%20", "/api/admin.json%0A", "/api/admin.json%00", "/api/admin.json;x", "/api/admin.json#x",
              "/api/admin.%E2%80%A8", "/api/adm%C4%B1n.json", "/api/admin%C0%AEjson", "/api/admin.json~",
              "/api/admin.-", "/api/admin._", "/api/admin.~", "/api/admin.%25", "/api/admin.%2F", "/api/.json",
              "/api/admin.json.%2e", "/api/admin/.json", "/api/ADMIN.%2E%2E/"]:
        yield get("format-suffix", t, t)
    for m in (b"HEAD", b"POST", b"PUT", b"OPTIONS"):
        yield Req("format-suffix", f"{m.decode()} /api/admin.json", m, b"/api/admin.json")
    for t in ["/api/items/1.json", "/api/items/1.xml", "/api/items/1.json/", "/api/items/1.tar.gz", "/api/ITEMS/1.json",
              "/api/Items/1.JSON", "/api/items/1%2Ejson", "/api/items/1.json.", "/api/items/1..json",
              "/api/items/%31.json", "/api/items/1.%6Ason", "/api/items/1.json?x=1", "//api/items/1.json",
              "/api/x/../items/1.json", "/api/items/1.json%0A", "/api/items.json/1", "/api/items/.json"]:
        yield delete("format-suffix", f"DELETE {t}", t)
    for t in ["/api/items/1.json?_method=DELETE", "/api/items/1.json?%5B_method%5D=DELETE"]:
        yield Req("format-suffix", f"POST {t}", b"POST", t.encode(), body=b"{}")
    yield Req("format-suffix", "POST items/1.json X_HTTP_Method_Override", b"POST", b"/api/items/1.json",
              headers=((b"X_HTTP_Method_Override", b"DELETE"),), body=b"{}")


# Letters with more than one case partner: case-insensitive matchers (Python's re.I, PCRE's
# /iu, JavaScript's /iu, .NET) equate all of them. gatehouse's test policy protects
# /api/σettings/** and /api/μsvc/**; the upstreams with feature "unicode-routes" have admin
# handlers there.
CASE_PAIRS = {
    "\u03c3": ["\u03c2", "\u03a3", "\u03c3"],  # σ: final ς, capital Σ, σ itself
    "\u03bc": ["\u00b5", "\u039c", "\u03bc"],  # μ: MICRO SIGN µ, capital Μ, μ itself
}


@corpus_class("unicode-case")
def unicode_case_class():
    for letter, rest in [("\u03c3", "ettings"), ("\u03bc", "svc")]:
        for alt in CASE_PAIRS[letter]:
            for rest_cased in (rest, rest.upper()):
                for suffix in ("", "/", "/x", ".json"):
                    for how in ("pct", "pct-lower", "raw"):
                        if how == "raw" and suffix not in ("", "/x"):
                            continue
                        if how == "raw":
                            t = b"/api/" + (alt + rest_cased + suffix).encode("utf-8")
                        else:
                            t = ("/api/" + pct(alt, how == "pct-lower") + rest_cased + suffix).encode("ascii")
                        label = f"GET U+{ord(alt):04X}{rest_cased}{suffix} {how}"
                        yield Req("unicode-case", label, b"GET", t, needs="unicode-routes")
        # Through dot segments and from upper-case API.
        yield Req("unicode-case", f"via dot segment U+{ord(letter):04X}", b"GET",
                  ("/api/public/../" + pct(CASE_PAIRS[letter][0]) + rest).encode(), needs="unicode-routes")
        yield Req("unicode-case", f"upper API U+{ord(letter):04X}", b"GET",
                  ("/API/" + pct(CASE_PAIRS[letter][1]) + rest.upper()).encode(), needs="unicode-routes")
    # The micro sign's and final sigma's overlong and decomposed look-alikes stay other paths.
    for t in ["/api/%C0%B5svc", "/api/%CF%82%CC%81ettings", "/api/%CE%BC%CC%81svc"]:
        yield Req("unicode-case", f"GET {t}", b"GET", t.encode(), needs="unicode-routes")


# --- methods ---------------------------------------------------------------------------------


@corpus_class("method-case")
def method_case_class():
    for m in ["delete", "Delete", "dELETE", "DELETe", "DeLeTe", "deletE"]:
        yield Req("method-case", f"{m} items/1", m.encode(), b"/api/items/1")
    for m in ["get", "Get", "gET", "head", "post", "put", "options"]:
        yield Req("method-case", f"{m} admin", m.encode(), b"/api/admin")
    for m in ["HEAD", "OPTIONS", "TRACE", "PUT", "PATCH", "POST", "PROPFIND", "FOO", "M-SEARCH"]:
        yield Req("method-case", f"{m} admin", m.encode(), b"/api/admin")
    for m in ["PUT", "PATCH", "OPTIONS", "HEAD", "TRACE", "FOO", "PURGE"]:
        yield Req("method-case", f"{m} items/1", m.encode(), b"/api/items/1")
    for m in [b"DEL\xc3\x89TE", b"DELETE\x00", b"DELETE\t", b" DELETE", b"DELETE\x0b", b"D\x00ELETE"]:
        yield Req("method-case", f"odd {m!r} items/1", m, b"/api/items/1")
    yield Req("method-case", "post with ?_method lower", b"post", b"/api/items/1?_method=DELETE")
    yield Req("method-case", "delete items/1.json", b"delete", b"/api/items/1.json")


OVERRIDE_HEADERS = ["X-HTTP-Method-Override", "X-HTTP-Method", "X-Method-Override"]


def sep_spellings(name):
    """The name with `-`, with every `-` as `_`, and with each single `-` as `_`."""
    out = [name, name.replace("-", "_")]
    dashes = [i for i, c in enumerate(name) if c == "-"]
    for i in dashes:
        out.append(name[:i] + "_" + name[i + 1:])
    return list(dict.fromkeys(out))


def case_spellings(name):
    return list(dict.fromkeys([name, name.lower(), name.upper(), name.title()]))


@corpus_class("override-header")
def override_header_class():
    for base in OVERRIDE_HEADERS:
        for spelled in sep_spellings(base):
            for cased in case_spellings(spelled):
                for value in ("DELETE", "delete"):
                    yield Req("override-header", f"POST {cased}: {value}", b"POST", b"/api/items/1",
                              headers=((cased.encode(), value.encode()),), body=b"{}",
                              protos=("h1",))
        for spelled in sep_spellings(base)[:2]:
            for m in (b"GET", b"PUT", b"PATCH"):
                yield Req("override-header", f"{m.decode()} {spelled}: DELETE", m, b"/api/items/1",
                          headers=((spelled.encode(), b"DELETE"),))
    # Duplicated, padded and comma-listed values.
    for hdrs in [((b"X_HTTP_Method_Override", b"GET"), (b"X_HTTP_Method_Override", b"DELETE")),
                 ((b"X_HTTP_Method_Override", b" DELETE "),),
                 ((b"X_HTTP_Method_Override", b"DELETE, POST"),),
                 ((b"X_HTTP_METHOD_OVERRIDE", b"DELETE"), (b"X-Custom", b"1"))]:
        yield Req("override-header", f"POST {hdrs!r}", b"POST", b"/api/items/1", headers=hdrs, body=b"{}")


OVERRIDE_PARAMS = ["_method", "__method", "_http_method", "_METHOD", "_Method", "%5Fmethod",
                   "%5fmethod", "_method[]", "_method%5B%5D", "_%6Dethod", "_me%74hod",
                   "x-http-method-override", "X-HTTP-Method-Override", "X_HTTP_METHOD_OVERRIDE",
                   "_method.", "_method%00", ".method", "method", "_method ", "_method%20"]


@corpus_class("override-query")
def override_query_class():
    for name in OVERRIDE_PARAMS:
        for q in [f"{name}=DELETE", f"a=1&{name}=DELETE", f"{name}=DELETE&a=1",
                  f"a=1&{name}=DELETE&b=2", f"_method=GET&{name}=DELETE"]:
            yield Req("override-query", f"POST ?{q}", b"POST", f"/api/items/1?{q}".encode(), body=b"{}")
    for q in ["_method=delete", "_method=%44ELETE", "_method=Delete", "_method=DELETE%00",
              "_method=DELETE&_method=GET", "_method=%20DELETE", "&&_method=DELETE", "a=1;_method=DELETE",
              "_method=DELETE#x", "%3F_method=DELETE", "?_method=DELETE", "_method=DELETE;",
              "_method=DELET%45", "_method", "_method=", "_method=DELETE&"]:
        yield Req("override-query", f"POST ?{q}", b"POST", f"/api/items/1?{q}".encode(), body=b"{}")
    for t in ["/api/items/1/?_method=DELETE", "/API/ITEMS/1?_method=DELETE", "/api/items/1%0A?_method=DELETE"]:
        yield Req("override-query", f"POST {t}", b"POST", t.encode(), body=b"{}")
    for m in (b"GET", b"PUT"):
        yield Req("override-query", f"{m.decode()} ?_method=DELETE", m, b"/api/items/1?_method=DELETE")
    # A form body override cannot be seen without reading the body; sent for the record.
    for body in [b"_method=DELETE", b"a=1&_method=DELETE"]:
        yield Req("override-query", f"POST form body {body!r}", b"POST", b"/api/items/1",
                  headers=((b"Content-Type", b"application/x-www-form-urlencoded"),), body=body)


# Override names as some framework reads them after its own name mangling: PHP cuts a name at
# NUL and drops a `[...]` suffix, qs (Express) and Rack strip leading brackets, classic ASP.NET
# decodes `%uXXXX` and compares ignoring case, where `ı` (U+0131) is `I`.
MANGLED_OVERRIDE_PARAMS = [
    "_method%00", "_method%00x", "_me%74hod%00x", "_method%00%00", "_method%00.x", "_METHOD%00x",
    "[_method]", "%5B_method%5D", "%5b_method%5d", "]]_method", "[_method", "[]_method", "[[_method]]",
    "%5B%5D_method", "[_method][]", "_method[0]", "_method[a]", "_method[", "_method%5B", "_http.method",
    "+_method", "%20_method", "_method+", "X%u002DHTTP-Method-Override", "X%u002dHTTP%u002dMethod%u002dOverride",
    "_%u006Dethod", "%u005Fmethod", "%U005Fmethod", "_%u006D%u0065thod", "x-http-method-overr%C4%B1de",
    "X-HTTP-METHOD-OVERR%C4%B1DE", "x-http-method-overr%u0131de", "X_HTTP_METHOD_OVERR%C4%B0DE",
    "x-http-method-overr%c4%b1de", "X.HTTP.Method.Override", "x~http~method~override",
]


@corpus_class("override-mangle")
def override_mangle_class():
    for name in MANGLED_OVERRIDE_PARAMS:
        for q in [f"{name}=DELETE", f"a=1&{name}=DELETE", f"{name}=DELETE&a=1", f"_method=GET&{name}=DELETE",
                  f"a=1;{name}=DELETE"]:
            yield Req("override-mangle", f"POST ?{q}", b"POST", f"/api/items/1?{q}".encode(), body=b"{}")
    # Extra `?`s: a parser that skips them all (PHP's built-in server) reads `_method` here.
    for q in ["??_method=DELETE", "???_method=DELETE", "??_method%00x=DELETE", "??[_method]=DELETE",
              "?&_method=DELETE", "??x-http-method-overr%C4%B1de=DELETE", "?%3F_method=DELETE"]:
        yield Req("override-mangle", f"POST ?{q}", b"POST", f"/api/items/1?{q}".encode(), body=b"{}")
    for t in ["/api/items/1.json?_method%00=DELETE", "/API/ITEMS/1?[_method]=DELETE",
              "/api/items/1/?_%u006Dethod=DELETE"]:
        yield Req("override-mangle", f"POST {t}", b"POST", t.encode(), body=b"{}")


# --- headers ---------------------------------------------------------------------------------

# Headers a client must never get to an upstream: the identity headers gatehouse sets, URL and
# method overrides that some servers honour, and client-address headers.
SPOOF_TEXT = ["X-Auth-User-Id", "X-Auth-Email", "X-Auth-Roles", "X-Auth-Session-Id", "X-Auth-Anything",
              "X-Original-URL", "X-Rewrite-URL", "X-Original-URI", "X-Forwarded-Uri", "X-Forwarded-Path",
              "X-Envoy-Original-Path", "Request-Uri", "X-Original-Method", "X-Forwarded-Host",
              "X-Forwarded-Proto", "X-Forwarded-Port", "X-Forwarded-Prefix", "X-Forwarded-Scheme",
              "X-Forwarded-Ssl"]
SPOOF_IP = ["X-Forwarded-For", "X-Real-IP", "True-Client-IP", "X-Client-IP", "CF-Connecting-IP",
            "X-Cluster-Client-IP", "Forwarded"]
SPOOF_IP_VALUE = b"203.0.113.9"

# Every header name the corpus spoofs, lower-case with `-`: the nginx upstream echoes these.
SPOOF_NAMES = [n.lower() for n in SPOOF_TEXT + SPOOF_IP]


def spoof_value(name, n):
    """A value unique to one request, and the byte string that shows it arrived."""
    if name in SPOOF_IP:
        v = b"for=" + SPOOF_IP_VALUE if name == "Forwarded" else SPOOF_IP_VALUE
        return v, SPOOF_IP_VALUE
    token = f"spoof{n:05d}x".encode()
    if "URL" in name or "URI" in name.upper() or "Path" in name or "Prefix" in name:
        return b"/api/admin/" + token, token
    if name == "X-Original-Method":
        return b"DELETE" + token, token
    return token, token


@corpus_class("header-spoof")
def header_spoof_class():
    n = 0
    for name in SPOOF_TEXT + SPOOF_IP:
        spellings = []
        for s in sep_spellings(name)[:3]:
            spellings += case_spellings(s)[:3]
        for spelled in dict.fromkeys(spellings):
            n += 1
            value, shows = spoof_value(name, n)
            yield Req("header-spoof", f"{spelled}", b"GET", b"/api/public",
                      headers=((spelled.encode(), value),), forbid=(shows,),
                      protos=("h1", "h2") if spelled == spelled.lower() else ("h1",))
    # Framing tricks on one identity header: obs-fold, whitespace before the colon, repeats.
    n += 1
    tricks = [
        ((b"X-Auth-Roles", b"reader"), (b" admin-spoof%05dx" % n, None)),
        ((b"X-Auth-Roles ", b"admin-spoof%05dx" % (n + 1)),),
        ((b"X-Auth-Roles\t", b"admin-spoof%05dx" % (n + 2)),),
        ((b"X-Auth-Roles", b"admin-spoof%05dx" % (n + 3)), (b"x-auth-roles", b"admin-spoof%05dx" % (n + 3))),
        ((b"X-Forwarded-For", b"127.0.0.1"), (b"X-Forwarded-For", SPOOF_IP_VALUE)),
    ]
    for i, hdrs in enumerate(tricks):
        shows = SPOOF_IP_VALUE if i == 4 else b"spoof%05dx" % (n + i)
        yield Req("header-spoof", f"framing {hdrs!r}", b"GET", b"/api/public", headers=hdrs, forbid=(shows,))


# Characters a header name may hold (RFC 9110 tchar) besides letters, digits, `-` and `_`.
# CGI-style upstreams read some of them as `-`: PHP turns `.` (and `-`, `_`) into `_`, so
# `X.Auth.Roles` is $_SERVER['HTTP_X_AUTH_ROLES'].
NAME_PUNCT = [".", "~", "!", "#", "$", "%", "&", "'", "*", "+", "^", "`", "|"]
PUNCT_NAMES = ["X-Auth-Roles", "X-Auth-User-Id", "X-Auth-Email", "X-Original-URL", "X-Forwarded-For"]


@corpus_class("header-punct")
def header_punct_class():
    n = 50000  # spoof tokens distinct from header-spoof's
    spellings = []
    for name in PUNCT_NAMES:  # every `-` as one punctuation character
        spellings += [(name, name.replace("-", p)) for p in NAME_PUNCT]
        spellings += [(name, name.replace("-", p).lower()) for p in (".", "~")]  # also over HTTP/2
    for name in SPOOF_TEXT + SPOOF_IP:  # `.` everywhere and for the first `-` only, `~` everywhere
        first, _, rest = name.partition("-")
        spellings += [(name, name.replace("-", ".")), (name, first + "." + rest), (name, name.replace("-", "~")),
                      (name, name.replace("-", ".").upper()), (name, name.replace("-", "_").replace("_", ".", 1))]
    for name, spelled in dict.fromkeys(spellings):
        n += 1
        value, shows = spoof_value(name, n)
        yield Req("header-punct", spelled, b"GET", b"/api/public", headers=((spelled.encode(), value),),
                  forbid=(shows,), protos=("h1", "h2") if spelled == spelled.lower() else ("h1",))
    # After gatehouse's own identity header: a CGI environment keeps the last of one key.
    for spelled in ["X.Auth.Roles", "X_Auth.Roles", "x.auth.roles", "X.Auth.User.Id", "X.AUTH.EMAIL"]:
        n += 1
        token = b"admin-spoof%05dx" % n
        yield Req("header-punct", f"{spelled} after X-Probe", b"GET", b"/api/public",
                  headers=((b"X-Probe", b"1"), (spelled.encode(), token), (b"X-Probe-After", b"1")),
                  forbid=(token[len(b"admin-"):],))
    # Method-override headers with punctuation for `-`.
    for base in OVERRIDE_HEADERS:
        for p in NAME_PUNCT:
            spelled = base.replace("-", p)
            yield Req("header-punct", f"POST {spelled}: DELETE", b"POST", b"/api/items/1",
                      headers=((spelled.encode(), b"DELETE"),), body=b"{}")
        first, _, rest = base.partition("-")
        for spelled in (first + "." + rest, base.replace("-", ".").lower(), base.replace("-", "_").replace("_", ".", 1)):
            yield Req("header-punct", f"POST {spelled}: DELETE", b"POST", b"/api/items/1",
                      headers=((spelled.encode(), b"DELETE"),), body=b"{}")
    # Two override headers, the second one punctuated (PHP keeps the last of one key).
    yield Req("header-punct", "POST X-Custom then X.HTTP.Method.Override", b"POST", b"/api/items/1",
              headers=((b"X-Custom", b"1"), (b"X.HTTP.Method.Override", b"DELETE")), body=b"{}")


# --- bodies ----------------------------------------------------------------------------------


@corpus_class("chunked")
def chunked_class():
    bodies = [
        ("bad chunk size", b"zz\r\nhello\r\n0\r\n\r\n", False),
        ("negative chunk size", b"-5\r\nhello\r\n0\r\n\r\n", False),
        ("0x prefix", b"0x5\r\nhello\r\n0\r\n\r\n", False),
        ("bare LF everywhere", b"5\nhello\n0\n\n", False),
        ("bare LF after size", b"5\nhello\r\n0\r\n\r\n", False),
        ("bare CR after size", b"5\rhello\r\n0\r\n\r\n", False),
        ("LF inside chunk extension", b"5;a=b\nc\r\nhello\r\n0\r\n\r\n", False),
        ("extension ends with bare LF", b"5;a\nhello\r\n0\r\n\r\n", False),
        ("missing CRLF after data", b"5\r\nhelloXX0\r\n\r\n", False),
        ("data longer than size", b"3\r\nhello\r\n0\r\n\r\n", False),
        ("size overflow 18 digits", b"FFFFFFFFFFFFFFFFFF\r\nhello\r\n0\r\n\r\n", False),
        ("size overflow 2^64", b"10000000000000000\r\nhello\r\n0\r\n\r\n", False),
        ("truncated chunk data", b"5\r\nhel", True),
        ("truncated before last chunk", b"5\r\nhello\r\n", True),
        ("truncated huge chunk", b"FFFFFFF\r\nhello", True),
    ]
    for label, body, half in bodies:
        yield Req("chunked", label, b"POST", b"/api/items/1", body=body, chunked=True,
                  half_close=half, check="chunked")


# --- HTTP/2 only -----------------------------------------------------------------------------


@corpus_class("h2-pseudo")
def h2_only_class():
    """What only HTTP/2 can say: bytes in :path that no HTTP/1.1 request line can carry,
    repeated pseudo-headers, disagreeing :authority/host."""
    for p in [b"/api/admin ", b"/api/ad min", b"/api/admin\n", b"/api/admin\r\n", b"/api/admin\t",
              b"/api/admin\x00", b"/api/adm\xc4\xb1n", b"/api/ADMIN", b"api/admin", b"*",
              b"http://127.0.0.1/api/admin", b"/api/admin#x", b"/api/public/../admin", b"",
              b"/api/ADMIN.json", b"/api/admin.json/"]:
        yield Req("h2-pseudo", f":path {p!r}", b"GET", p, protos=("h2",))
    yield Req("h2-pseudo", "two :path", b"GET", b"/api/public", protos=("h2",), h2_pseudo=((b":path", b"/api/admin"),))
    yield Req("h2-pseudo", "two :method", b"POST", b"/api/items/1", protos=("h2",),
              h2_pseudo=((b":method", b"DELETE"),))
    yield Req("h2-pseudo", "lower :method delete", b"delete", b"/api/items/1", protos=("h2",))
    yield Req("h2-pseudo", "upper-case header name", b"POST", b"/api/items/1", protos=("h2",),
              headers=((b"X-HTTP-Method-Override", b"DELETE"),))
    yield Req("h2-pseudo", "host disagrees with :authority", b"GET", b"/api/admin", protos=("h2",),
              headers=((b"host", b"127.0.0.2:1"),))
    yield Req("h2-pseudo", ":authority other host", b"GET", b"/api/admin", protos=("h2",),
              h2_authority=b"127.0.0.2:1")


def build(h2_per_class=12, seed=7):
    """The whole corpus: a list of Req, de-duplicated, and with a seeded sample of each
    path class also sent over HTTP/2."""
    rng = random.Random(seed)
    out, seen = [], set()
    for name, gen in CLASSES.items():
        reqs = []
        for r in gen():
            key = (r.method, r.target, r.headers, r.body, r.host, r.protos, r.h2_pseudo, r.h2_authority)
            if key in seen:
                continue
            seen.add(key)
            reqs.append(r)
        # HTTP/2 subset: plain requests (no body, no extra header) of the path classes.
        eligible = [i for i, r in enumerate(reqs)
                    if r.protos == ("h1",) and not r.body and not r.headers and r.host is None
                    and b"{HOSTPORT}" not in r.target and r.check == "admin"]
        for i in rng.sample(eligible, min(h2_per_class, len(eligible))):
            r = reqs[i]
            reqs[i] = dataclasses.replace(r, protos=("h1", "h2"))
        out.extend(reqs)
    return out


if __name__ == "__main__":
    from collections import Counter

    corpus = build()
    c = Counter(r.cls for r in corpus)
    for k, v in c.items():
        print(f"{k:16} {v:5}  h2: {sum(1 for r in corpus if r.cls == k and 'h2' in r.protos)}")
    print("total", len(corpus), "h1", sum("h1" in r.protos for r in corpus),
          "h2", sum("h2" in r.protos for r in corpus))
