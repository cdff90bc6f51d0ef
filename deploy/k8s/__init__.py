"""The stack on Kubernetes (GKE TPU first): kustomize base, components and generated overlays.

``spec`` says what each overlay is and derives the pod settings from its profile; ``generate``
writes the overlays; ``validate`` renders them with ``kubectl kustomize`` and checks every object
offline. ``python -m deploy.k8s`` (``make k8s-generate|k8s-render|k8s-check``) drives them.
docs/kubernetes.md is the user's guide.
"""
