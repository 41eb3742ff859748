"""Front-end files that `collectstatic` with DEBUG=0 (the manifest storage) can process: every URL it rewrites
must name a file in the tree, or collectstatic aborts and the image build fails."""

import re
from pathlib import Path

STATIC = Path(__file__).resolve().parent.parent / "static"
SOURCE_MAP = re.compile(rb"^//# sourceMappingURL=(\S+)$", re.M)
CSS_URL = re.compile(rb"url\(\s*['\"]?(?!data:|https?:|#)([^'\")]+)['\"]?\s*\)")


def test_every_source_map_reference_is_vendored():
    for path in STATIC.rglob("*.js"):
        for name in SOURCE_MAP.findall(path.read_bytes()):
            assert (path.parent / name.decode()).is_file(), (
                f"{path.relative_to(STATIC)} names missing {name!r}"
            )


def test_every_css_url_names_a_file():
    for path in STATIC.rglob("*.css"):
        for name in CSS_URL.findall(path.read_bytes()):
            target = name.decode().split("?")[0].split("#")[0]
            assert (path.parent / target).is_file(), f"{path.relative_to(STATIC)} names missing {target!r}"
