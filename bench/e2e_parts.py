"""Where the CPU of one URL goes in `bench/e2e_bench.py`: each stage of the download-mode text-to-image build
timed alone, per image, on the e2e bench's own inputs (768 px crops of the package photos, fitted to 512).

    python bench/e2e_parts.py [--images 300] [--json FILE]

- decode: `imageio.load(fit_side=512)` (header check + full decode into a numpy array with simplejpeg), beside
  `decode_pil` (the same through PIL, then the copy into numpy OpenCV needs: the path before simplejpeg);
- fit_encode: `imageio.fit` of that array to 512 px (resample + centre crop + JPEG q95 4:4:4 with OpenCV), beside
  `fit_encode_pil` (from a PIL image: the copy into numpy and back, PIL's encoder) and `fit_encode_area` (INTER_AREA,
  what fit used before INTER_LINEAR for scales >= 2/3);
- phash: `x2i.curation.phash` on the fitted array (area-averaged 32x32 grey), beside `phash_lanczos` (imagehash's
  PIL LANCZOS reduction of the fitted PIL image, what x2i used before);
- download: `Downloader.fetch_many` CPU (all threads) per URL from a loopback server in another process, beside
  `download_bare` (connect, one GET, read to the close on 16 threads: the floor any checked fetch builds on).
Each stage starts from fresh objects (no pixels cached between stages). The sum is the floor of x2i's per-URL
CPU for this input; e2e_bench's CPU figure adds process start-up, Parquet, ids and meta, the rejects ledger and
the post-build pass.
"""
from __future__ import annotations

import argparse
import multiprocessing
import resource
import time

import cv2
import numpy as np
from PIL import Image

from e2e_bench import images, serve
from report import report


def per_image_ms(fn, items) -> float:
    start = time.process_time()
    for item in items:
        fn(item)
    return round((time.process_time() - start) / len(items) * 1000, 3)


def fit_area(image, max_side: int = 512):
    """fit's size policy with OpenCV INTER_AREA at every downscale (the resampling before this change)."""
    from x2i.core.imageio import encode, fit_size, scaled_size

    t = fit_size(image.width, image.height, max_side)
    pixels = np.asarray(image.pil())
    scaled = cv2.resize(pixels, scaled_size(image.width, image.height, t.scale), interpolation=cv2.INTER_AREA)
    out = scaled[t.crop_top:t.crop_top + t.height, t.crop_left:t.crop_left + t.width]
    return encode(Image.fromarray(np.ascontiguousarray(out)), "JPEG", 95)


def phash_lanczos(image: Image.Image) -> str:
    """imagehash's reduction (grey, PIL LANCZOS to 32x32) with x2i's DCT and bits: the pHash before this change."""
    from x2i.curation.phash import phash

    return phash(image.convert("L").resize((32, 32), Image.Resampling.LANCZOS))


def _bare_get(base: str, i: int) -> bool:
    """The floor of a fetch: connect, one GET, read to the close; no checks, no parsing."""
    import socket

    host, port = base.rsplit("/", 1)[1].split(":")
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(f"GET /img/{i}.jpg HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks).startswith(b"HTTP/1.1 200")


def download_ms(bodies: list[bytes]) -> tuple[float, float]:
    """CPU ms a URL (all threads) of `Downloader.fetch_many`, and of bare socket GETs on 16 threads."""
    from concurrent.futures import ThreadPoolExecutor

    from x2i.download.fetch import DownloadConfig, Downloader

    queue = multiprocessing.get_context("fork").Queue()
    server = multiprocessing.get_context("fork").Process(target=serve, args=(bodies, 0.02, queue), daemon=True)
    server.start()
    base = f"http://127.0.0.1:{queue.get(timeout=30)}"
    downloader = Downloader(DownloadConfig(allow_networks=("127.0.0.0/8",), concurrency=16, timeout=10.0, retries=0))

    def cpu() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    before = cpu()
    ok = sum(r.status == "success" for r in downloader.fetch_many(f"{base}/img/{i}.jpg" for i in range(len(bodies))))
    mid = cpu()
    with ThreadPoolExecutor(16) as pool:
        bare = sum(pool.map(lambda i: _bare_get(base, i), range(len(bodies))))
    after = cpu()
    server.terminate()
    assert ok == bare == len(bodies), f"{ok} and {bare} of {len(bodies)} downloads succeeded"
    return round((mid - before) / len(bodies) * 1000, 3), round((after - mid) / len(bodies) * 1000, 3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--images", type=int, default=300)
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    from x2i.core import imageio
    from x2i.curation.phash import phash

    bodies = images(a.images)
    res = {"images": a.images}
    res["download"], res["download_bare"] = download_ms(bodies)
    res["decode"] = per_image_ms(lambda b: imageio.load(b, fit_side=512).array(), bodies)
    res["decode_pil"] = per_image_ms(lambda b: np.asarray(imageio.load(b).pil()), bodies)
    res["fit_encode"] = per_image_ms(lambda b: imageio.fit(b, 512, 16, 95),
                                     [imageio.load(b, fit_side=512) for b in bodies])
    res["fit_encode_pil"] = per_image_ms(lambda b: imageio.fit(b, 512, 16, 95), [imageio.load(b) for b in bodies])
    res["fit_encode_area"] = per_image_ms(fit_area, [imageio.load(b) for b in bodies])
    fitted = [imageio.fit(imageio.load(b, fit_side=512), 512, 16, 95)[0] for b in bodies]
    res["phash"] = per_image_ms(lambda im: phash(im.array()), fitted)
    res["phash_lanczos"] = per_image_ms(phash_lanczos, [im.pil() for im in fitted])
    res["sum_ms"] = round(sum(res[k] for k in ("download", "decode", "fit_encode", "phash")), 3)
    res["sum_before_ms"] = round(sum(res[k] for k in ("download", "decode_pil", "fit_encode_pil", "phash_lanczos")), 3)
    report(res, a.json)


if __name__ == "__main__":
    main()
