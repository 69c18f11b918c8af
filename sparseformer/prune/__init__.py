"""sparseformer.prune"""
