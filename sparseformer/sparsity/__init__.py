"""sparseformer.sparsity"""
