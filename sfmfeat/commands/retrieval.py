"""CLI: ``sfmfeat retrieval`` (global descriptors + nearest-neighbour pairs) and the
``retrieval`` / ``covisibility`` kinds of ``sfmfeat pairs``.

    sfmfeat retrieval -o pairs.txt --method vlad --features feats.h5 [--db-prefix db/]
    sfmfeat retrieval -o pairs.txt --method netvlad --images IMAGES [--query-list q.txt]
    sfmfeat pairs covisibility --model sfm/ -o pairs.txt --num-neighbors 20
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..errors import InputError
from ..images import read_image_list

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "retrieval", help="global descriptors and retrieval pairs (VLAD, NetVLAD)",
        description="Compute global descriptors and pair each query with its most similar "
                    "database images, in bounded memory.")
    add_retrieval_arguments(p)
    p.set_defaults(func=run_retrieval)


def register_pair_kinds(kinds: argparse._SubParsersAction) -> None:
    """Add ``retrieval`` and ``covisibility`` to the kinds of ``sfmfeat pairs``."""
    k = kinds.add_parser("retrieval", help="most similar images by global descriptor")
    add_retrieval_arguments(k)
    k.set_defaults(func=run_retrieval)
    k = kinds.add_parser("covisibility", help="images sharing most 3D points in a model")
    k.add_argument("--model", type=Path, required=True, help="COLMAP model folder")
    k.add_argument("--num-neighbors", type=int, default=20)
    k.add_argument("--image-list", type=Path, help="pair only these model images")
    k.add_argument("-o", "--output", type=Path, required=True)
    k.set_defaults(func=run_covisibility)


def add_retrieval_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", type=Path, required=True, help="pairs file to write")
    p.add_argument("--method", default="vlad",
                   help="vlad: over local features (no weights); netvlad: official weights; "
                        "contextdesc: max-pooled regional ResNet50 map of ContextDesc; "
                        "stored: the --descriptors file as it is (ours or hloc's, e.g. its "
                        "global-feats-netvlad.h5), nothing computed")
    p.add_argument("--images", type=Path, help="image folder (NetVLAD)")
    p.add_argument("--features", type=Path, help="local features .h5 (VLAD)")
    p.add_argument("--descriptors", type=Path,
                   help="global descriptor .h5 (default: beside the output)")
    p.add_argument("--db-descriptors", type=Path,
                   help="database descriptors in another file (already computed)")
    p.add_argument("--num-neighbors", type=int, default=20)
    for side in ("query", "db"):
        group = p.add_mutually_exclusive_group()
        group.add_argument(f"--{side}-list", type=Path, help=f"{side} image names file")
        group.add_argument(f"--{side}-prefix", help=f"{side} images: names starting so")
    p.add_argument("--min-score", type=float, default=None,
                   help="drop neighbours less similar than this")
    p.add_argument("--clusters", type=int, default=64, help="VLAD codebook size")
    p.add_argument("--codebook", type=Path,
                   help="a VLAD codebook .h5 to use as it is (default: learned once on the "
                        "database images and kept beside the output, keyed on the features' "
                        "and VLAD's config hashes)")
    p.add_argument("--memory-mb", type=float, default=512.0,
                   help="bound on the retrieval working arrays")
    p.add_argument("--device", help="cpu or cuda (NetVLAD)")
    p.add_argument("--overwrite", action="store_true", help="recompute the descriptors")


def _select(all_names: list[str], list_path: Path | None, prefix: str | None,
            what: str) -> list[str]:
    if list_path:
        names = read_image_list(list_path)
        known = set(all_names)
        absent = [n for n in names if n not in known]
        if absent:
            raise InputError(f"{list_path}: {len(absent)} {what} image(s) unknown: "
                             + ", ".join(absent[:5]))
        return names
    if prefix:
        names = [n for n in all_names if n.startswith(prefix)]
        if not names:
            raise InputError(f"no {what} image name starts with {prefix!r}")
        return names
    return list(all_names)


def run_retrieval(args) -> int:
    from ..localization import retrieval as ret
    from ..pairs import write_pairs

    config = ret.RetrievalConfig(method=args.method, num_neighbors=args.num_neighbors,
                                 min_score=args.min_score, memory_mb=args.memory_mb,
                                 vlad=ret.VladConfig(num_clusters=args.clusters))
    method = ret.RETRIEVAL_METHODS[args.method](config, device=args.device)
    source = ret.ImageSet((), images=args.images, features=args.features,
                          descriptors=args.descriptors)
    if getattr(source, method.needs) is None:
        raise InputError(f"--method {args.method} needs --{method.needs} ("
                         + {"images": "an image folder", "features": "a features .h5",
                            "descriptors": "a global-descriptor .h5"}[method.needs] + ")")
    all_names = ret.available_names(method, source)
    queries = _select(all_names, args.query_list, args.query_prefix, "query")
    if args.db_descriptors:
        with ret.GlobalDescriptorReader(args.db_descriptors) as reader:
            all_names = reader.names()
    db = _select(all_names, args.db_list, args.db_prefix, "database")
    descriptors = args.descriptors or args.output.with_name(f"global-{args.method}.h5")
    if args.overwrite and args.method != "stored":
        descriptors.unlink(missing_ok=True)
    database = ret.ImageSet(tuple(db), args.images, args.features,
                            args.db_descriptors or args.descriptors)
    pairs = ret.retrieve(ret.ImageSet(tuple(queries), args.images, args.features,
                                      args.descriptors), database, args.output.parent,
                         config, device=args.device,
                         descriptors=(descriptors, args.db_descriptors or descriptors),
                         codebook=args.codebook)
    if not pairs:
        raise InputError("retrieval found no pair (fewer than two images, or --min-score "
                         "too high)")
    write_pairs(args.output, pairs)
    logger.info("%d retrieval pairs (%s, %d neighbours) -> %s", len(pairs), args.method,
                args.num_neighbors, args.output)
    return 0


def run_covisibility(args) -> int:
    from ..localization.covisibility import covisibility_pairs
    from ..pairs import write_pairs

    names = read_image_list(args.image_list) if args.image_list else None
    pairs = covisibility_pairs(args.model, args.num_neighbors, image_names=names)
    write_pairs(args.output, pairs)
    logger.info("%d covisibility pairs -> %s", len(pairs), args.output)
    return 0
