#!/usr/bin/env python3
"""An offline renderer for the Kustomize subset deploy/k8s uses, for
machines without `kubectl kustomize` (Debian 12's kubernetes-client 1.20
embeds a kustomize too old for these files). CI renders every overlay with
this and, where kubectl is present, checks that both agree object by object.

Supported kustomization.yaml fields: resources (files, or directories with a
kustomization.yaml), namespace, labels (pairs added to metadata.labels; no
selectors or templates), images (name -> newName / newTag), replicas, and
patches given by `path` holding strategic-merge patches (one or several
documents, each targeting the object of the same kind and name). The
strategic merge: maps merge recursively, a null value deletes the key, lists
of maps that all have a `name` merge by name, other lists are replaced.

Usage: python3 deploy/k8s/render.py OVERLAY_DIR > manifests.yaml
"""
import copy
import os
import sys

import yaml

CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding",
                  "CustomResourceDefinition", "PersistentVolume",
                  "StorageClass", "PriorityClass"}
SUPPORTED = {"apiVersion", "kind", "resources", "namespace", "labels",
             "images", "replicas", "patches"}


class RenderError(Exception):
    pass


def _load_docs(path):
    with open(path) as f:
        return [d for d in yaml.safe_load_all(f) if d is not None]


def merge(base, patch):
    """Strategic merge of `patch` into `base` (both plain YAML data)."""
    if isinstance(base, dict) and isinstance(patch, dict):
        out = dict(base)
        for k, v in patch.items():
            if v is None:
                out.pop(k, None)
            elif k in out:
                out[k] = merge(out[k], v)
            else:
                out[k] = copy.deepcopy(v)
        return out
    if (isinstance(base, list) and isinstance(patch, list) and patch and
            all(isinstance(x, dict) and "name" in x for x in base + patch)):
        out = [copy.deepcopy(x) for x in base]
        index = {x["name"]: i for i, x in enumerate(out)}
        for item in patch:
            if item["name"] in index:
                out[index[item["name"]]] = merge(out[index[item["name"]]], item)
            else:
                out.append(copy.deepcopy(item))
        return out
    return copy.deepcopy(patch)


def _key(obj):
    return (obj.get("kind"), obj.get("metadata", {}).get("name"))


def _containers(obj):
    spec = obj.get("spec", {})
    pod = spec.get("template", {}).get("spec") if "template" in spec else None
    if pod is None:
        return []
    return pod.get("containers", []) + pod.get("initContainers", [])


def _set_image(container, rule):
    image = container.get("image", "")
    name, tag = image, None
    if "@" in image:
        name = image.split("@", 1)[0]
    elif ":" in image.rsplit("/", 1)[-1]:
        name, tag = image.rsplit(":", 1)
    if name != rule["name"]:
        return
    new_name = rule.get("newName", name)
    new_tag = rule.get("newTag", tag)
    if "digest" in rule:
        container["image"] = f"{new_name}@{rule['digest']}"
    else:
        container["image"] = f"{new_name}:{new_tag}" if new_tag else new_name


def render(directory):
    path = os.path.join(directory, "kustomization.yaml")
    if not os.path.exists(path):
        raise RenderError(f"no kustomization.yaml in {directory}")
    with open(path) as f:
        k = yaml.safe_load(f) or {}
    unknown = set(k) - SUPPORTED
    if unknown:
        raise RenderError(f"{path}: unsupported fields {sorted(unknown)}")
    objects = []
    for res in k.get("resources", []):
        full = os.path.normpath(os.path.join(directory, res))
        if os.path.isdir(full):
            objects.extend(render(full))
        else:
            objects.extend(_load_docs(full))
    seen = set()
    for obj in objects:
        if _key(obj) in seen:
            raise RenderError(f"duplicate object {_key(obj)}")
        seen.add(_key(obj))

    for p in k.get("patches", []):
        if set(p) != {"path"}:
            raise RenderError(f"{path}: only `path` patches are supported: {p}")
        for patch in _load_docs(os.path.join(directory, p["path"])):
            matches = [i for i, o in enumerate(objects) if _key(o) == _key(patch)]
            if len(matches) != 1:
                raise RenderError(f"patch {p['path']}: no single target {_key(patch)}")
            objects[matches[0]] = merge(objects[matches[0]], patch)

    for r in k.get("replicas", []):
        hit = False
        for obj in objects:
            if obj["metadata"]["name"] == r["name"] and "replicas" in obj.get("spec", {}):
                obj["spec"]["replicas"] = r["count"]
                hit = True
        if not hit:
            raise RenderError(f"replicas: no workload named {r['name']}")

    for rule in k.get("images", []):
        for obj in objects:
            for c in _containers(obj):
                _set_image(c, rule)

    for entry in k.get("labels", []):
        if entry.get("includeSelectors") or entry.get("includeTemplates"):
            raise RenderError("labels: includeSelectors/includeTemplates unsupported")
        for obj in objects:
            obj.setdefault("metadata", {}).setdefault("labels", {}).update(entry["pairs"])

    if "namespace" in k:
        for obj in objects:
            if obj["kind"] not in CLUSTER_SCOPED:
                obj["metadata"]["namespace"] = k["namespace"]
    return objects


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    try:
        objects = render(sys.argv[1])
    except (RenderError, OSError, yaml.YAMLError) as e:
        print(f"render.py: {e}", file=sys.stderr)
        return 1
    yaml.safe_dump_all(objects, sys.stdout, sort_keys=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
