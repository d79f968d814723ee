"""The loghub baseline of issue 15: 1-nearest-neighbour on hashed byte 3-grams.

A text becomes the counts of its byte 3-grams (the zero padding after the text excluded), hashed
into ``buckets`` columns and scaled to unit length; a test text takes the label of the training
text of largest cosine similarity (the first one on ties).
"""
import numpy as np
import scipy.sparse as sp

FNV_PRIME = np.uint64(1099511628211)


def hashed_grams(x, n=3, buckets=1 << 16):
    """Texts x uint8 (N, 1, L), zero-padded -> CSR (N, buckets) float32 rows of unit length."""
    b = x[:, 0].astype(np.uint64)
    count, length = b.shape
    nonzero = b != 0
    ends = np.where(nonzero.any(axis=1), length - np.argmax(nonzero[:, ::-1], axis=1), 0)
    starts = length - n + 1
    h = np.zeros((count, starts), np.uint64)
    for t in range(n):
        h = h * FNV_PRIME ^ b[:, t:starts + t]
    valid = np.arange(starts)[None, :] + n <= ends[:, None]
    rows = np.nonzero(valid)[0]
    cols = (h[valid] % np.uint64(buckets)).astype(np.int64)
    m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(count, buckets))
    m.sum_duplicates()
    norms = np.sqrt(np.asarray(m.multiply(m).sum(axis=1))).ravel()
    return sp.diags((1.0 / np.maximum(norms, 1e-12)).astype(np.float32)) @ m


def nearest_neighbour_labels(train, y_train, test, chunk=1000):
    """Label (M,) of each test row's most cosine-similar training row; CSR rows of unit length."""
    out = np.empty(test.shape[0], y_train.dtype)
    for i in range(0, test.shape[0], chunk):
        out[i:i + chunk] = y_train[np.asarray((test[i:i + chunk] @ train.T).argmax(axis=1)).ravel()]
    return out


def knn_accuracy(data, n=3, buckets=1 << 16):
    """Test accuracy of the 1-nearest-neighbour baseline on a text Dataset."""
    pred = nearest_neighbour_labels(hashed_grams(data.x_train, n, buckets), data.y_train,
                                    hashed_grams(data.x_test, n, buckets))
    return float((pred == data.y_test).mean())
