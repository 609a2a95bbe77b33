/*
 * ecac._native: the project's one C module, for the hot loops Python cannot make fast.
 *
 * 1. Bulk decoding of stored Data ops for a replay from the store (scan, skeletons).
 *    A full replay of a 100k-op store spent ~5 us per op decoding rows in Python (byte
 *    searches, item decoding, three frozen dataclass instances), half of the replay. This
 *    does exactly that work for the one row shape that makes up the bulk of a log -- a
 *    canonical Data op -- and leaves every other row to the strict Python decoder.
 *
 *    A row is accepted only when it is byte for byte the canonical encoding (core §3) of
 *      header = {parents, hlc, author_pk} taken from the op's `edges` row,
 *      payload = {"Data": {"key": <text>, "value": <uint8 items>}},
 *      sig = 64 uint8 items, op_id = the 32 uint8 items of the row's key,
 *    with nothing after it. The header bytes are compared with the edges row, not re-hashed
 *    against the op id: put verified that hash (and the signature) before writing both rows
 *    in one batch, and verify_integrity / --verify-sigs recompute it (docs/decisions.md, D35).
 *    Anything else (other payload kinds, a mismatch, a malformed row) is handed back to the
 *    caller untouched, whose strict decoder parses it or names the op. The objects built are
 *    the same as ecac.op.slot_constructor builds: instances of the configured slots classes
 *    (Op, Hlc, Data) whose slots are set directly. Data keys are interned, through a table
 *    local to each scan call (no module-level cache).
 *
 * 2. Batch Ed25519 verification (verify_batch). PyNaCl verifies one signature per call and
 *    needs the GIL between calls, so verify threads stall while another thread runs Python
 *    (decoding the next batch of a bulk import). verify_batch checks a whole batch with the
 *    GIL released, calling libsodium's crypto_sign_verify_detached -- the same strict check
 *    as PyNaCl's crypto_sign_open -- from the libsodium PyNaCl already loaded, found on the
 *    first call (importing nacl._sodium for its path, dlopen RTLD_NOLOAD), never at import.
 *
 * 3. DAG chain extension (extend_chains): ecac.dag's common activation -- an op whose one
 *    parent is the tail of its chain extends that chain -- for a run of ops or a single one.
 *    The rule lives only here; ecac.dag keeps the general case in Python.
 *
 * 4. CBOR structure bounds (cbor_extent), checked before any untrusted CBOR is decoded: see its
 *    section below.
 *
 * Pure: no I/O, no clock, no randomness. Module state: the classes configured at import and the
 * libsodium function found on the first verify_batch call; nothing else is kept between calls.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <dlfcn.h>
#include <string.h>

typedef struct {
    PyTypeObject *type;
    Py_ssize_t *offsets;
    int n;
} SlotClass;

static Py_ssize_t op_off[7], hlc_off[3], data_off[2], edge_off[5];
static SlotClass op_cls = {NULL, op_off, 7}, hlc_cls = {NULL, hlc_off, 3}, data_cls = {NULL, data_off, 2},
                 edge_cls = {NULL, edge_off, 5};
/* The Data-key table of one scan call: UTF-8 bytes -> interned str, at most this many entries.
 * Per call, so the module holds no mutable state beyond the classes configured at import. */
#define KEY_TABLE_MAX 4096

static const char *const OP_FIELDS[] = {"parents", "hlc", "author_pk", "payload", "sig", "op_id", "cbor"};
static const char *const HLC_FIELDS[] = {"physical_ms", "logical", "node_id"};
static const char *const DATA_FIELDS[] = {"key", "value"};
static const char *const EDGE_FIELDS[] = {"parents", "author_pk", "hlc_ms", "hlc_logical", "hlc_node"};

#define SLOT(obj, off) (*(PyObject **)((char *)(obj) + (off)))

static int configure_class(SlotClass *cls, PyObject *type, const char *const *fields) {
    if (!PyType_Check(type)) {
        PyErr_SetString(PyExc_TypeError, "configure: expected a class");
        return -1;
    }
    for (int i = 0; i < cls->n; i++) {
        PyObject *descr = PyDict_GetItemString(((PyTypeObject *)type)->tp_dict, fields[i]);
        if (descr == NULL || !Py_IS_TYPE(descr, &PyMemberDescr_Type)) {
            PyErr_Format(PyExc_TypeError, "configure: %s.%s is not a slot", ((PyTypeObject *)type)->tp_name,
                         fields[i]);
            return -1;
        }
        PyMemberDef *m = ((PyMemberDescrObject *)descr)->d_member;
        if (m->type != T_OBJECT_EX) {
            PyErr_Format(PyExc_TypeError, "configure: %s.%s is not an object slot",
                         ((PyTypeObject *)type)->tp_name, fields[i]);
            return -1;
        }
        cls->offsets[i] = m->offset;
    }
    Py_XSETREF(cls->type, (PyTypeObject *)Py_NewRef(type));
    return 0;
}

static PyObject *configure_ops(PyObject *self, PyObject *args) {
    PyObject *op_t, *hlc_t, *data_t;
    if (!PyArg_ParseTuple(args, "OOO", &op_t, &hlc_t, &data_t))
        return NULL;
    if (configure_class(&op_cls, op_t, OP_FIELDS) < 0 || configure_class(&hlc_cls, hlc_t, HLC_FIELDS) < 0 ||
        configure_class(&data_cls, data_t, DATA_FIELDS) < 0)
        return NULL;
    Py_RETURN_NONE;
}

static PyObject *configure_edges(PyObject *self, PyObject *edge_t) {
    if (configure_class(&edge_cls, edge_t, EDGE_FIELDS) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* A new instance of cls with its slots set to new references of vals (all non-NULL). */
static PyObject *build(SlotClass *cls, PyObject *const *vals) {
    PyObject *o = cls->type->tp_alloc(cls->type, 0);
    if (o == NULL)
        return NULL;
    for (int i = 0; i < cls->n; i++)
        SLOT(o, cls->offsets[i]) = Py_NewRef(vals[i]);
    return o;
}

/* The Op with the header fields of the edges row `edge` (whose slots are all set) and the given
 * payload, sig, op_id and cbor: one Hlc and one Op instance. NULL with an error set on failure. */
static PyObject *op_from_edge(PyObject *edge, PyObject *payload, PyObject *sig, PyObject *op_id, PyObject *cbor) {
    PyObject *hv[3] = {SLOT(edge, edge_off[2]), SLOT(edge, edge_off[3]), SLOT(edge, edge_off[4])};
    PyObject *hlc = build(&hlc_cls, hv);
    if (hlc == NULL)
        return NULL;
    PyObject *ov[7] = {SLOT(edge, edge_off[0]), hlc, SLOT(edge, edge_off[1]), payload, sig, op_id, cbor};
    PyObject *op = build(&op_cls, ov);
    Py_DECREF(hlc);
    return op;
}

/* Whether every slot of an edges row is set (rows built by EdgeVal always are). */
static int edge_complete(PyObject *edge) {
    for (int i = 0; i < 5; i++)
        if (SLOT(edge, edge_off[i]) == NULL)
            return 0;
    return 1;
}

/* ---------------------------------------------------------------- canonical CBOR matching */

typedef struct {
    const unsigned char *d;
    Py_ssize_t n, p;
} Cur;

static int lit(Cur *c, const char *s, Py_ssize_t len) {
    if (c->n - c->p < len || memcmp(c->d + c->p, s, (size_t)len) != 0)
        return 0;
    c->p += len;
    return 1;
}
#define LIT(c, s) lit((c), (s), (Py_ssize_t)(sizeof(s) - 1))

/* A shortest-form head of major type `major`; its argument in *v. */
static int head(Cur *c, int major, unsigned long long *v) {
    if (c->p >= c->n)
        return 0;
    int b = c->d[c->p] - (major << 5);
    if (b >= 0 && b < 24) {
        *v = (unsigned long long)b;
        c->p += 1;
        return 1;
    }
    int w = b == 24 ? 1 : b == 25 ? 2 : b == 26 ? 4 : b == 27 ? 8 : 0;
    if (w == 0 || c->n - c->p < 1 + w)
        return 0;
    unsigned long long x = 0;
    for (int i = 1; i <= w; i++)
        x = (x << 8) | c->d[c->p + i];
    unsigned long long min = w == 1 ? 24ULL : 1ULL << (4 * w); /* else a shorter form exists */
    if (x < min)
        return 0;
    *v = x;
    c->p += 1 + w;
    return 1;
}

/* The canonical head of `major` with argument v equals the bytes at the cursor. */
static int head_is(Cur *c, int major, unsigned long long v) {
    Cur t = *c;
    unsigned long long got;
    if (!head(&t, major, &got) || got != v)
        return 0;
    *c = t;
    return 1;
}

/* n canonical uint8 items (a byte < 24, or 0x18 then a byte >= 24), decoded into out. */
static int items(Cur *c, Py_ssize_t n, unsigned char *out) {
    const unsigned char *d = c->d;
    Py_ssize_t p = c->p, end = c->n;
    for (Py_ssize_t i = 0; i < n; i++) {
        if (p >= end)
            return 0;
        unsigned char b = d[p];
        if (b < 24) {
            out[i] = b;
            p += 1;
        } else if (b == 24 && p + 1 < end && d[p + 1] >= 24) {
            out[i] = d[p + 1];
            p += 2;
        } else {
            return 0;
        }
    }
    c->p = p;
    return 1;
}

/* The canonical byte array (int-array form) of the bytes object b at the cursor. */
static int array_is(Cur *c, PyObject *b) {
    if (!PyBytes_Check(b))
        return 0;
    Py_ssize_t n = PyBytes_GET_SIZE(b);
    const unsigned char *s = (const unsigned char *)PyBytes_AS_STRING(b);
    if (!head_is(c, 4, (unsigned long long)n))
        return 0;
    const unsigned char *d = c->d;
    Py_ssize_t p = c->p, end = c->n;
    for (Py_ssize_t i = 0; i < n; i++) {
        unsigned char v = s[i];
        if (v < 24) {
            if (p >= end || d[p] != v)
                return 0;
            p += 1;
        } else {
            if (p + 1 >= end || d[p] != 24 || d[p + 1] != v)
                return 0;
            p += 2;
        }
    }
    c->p = p;
    return 1;
}

static int uint_is(Cur *c, PyObject *v) {
    if (!PyLong_CheckExact(v))
        return 0;
    unsigned long long x = PyLong_AsUnsignedLongLong(v);
    if (x == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    return head_is(c, 0, x);
}

/* The interned key for UTF-8 bytes [s, s+n), through the call's key table; NULL with no error
 * set when the bytes are not UTF-8, NULL with an error set on failure. */
static PyObject *data_key(PyObject *keys, const char *s, Py_ssize_t n) {
    PyObject *kb = PyBytes_FromStringAndSize(s, n);
    if (kb == NULL)
        return NULL;
    PyObject *key = PyDict_GetItemWithError(keys, kb);
    if (key != NULL) {
        Py_DECREF(kb);
        return Py_NewRef(key);
    }
    if (PyErr_Occurred()) {
        Py_DECREF(kb);
        return NULL;
    }
    key = PyUnicode_DecodeUTF8(s, n, "strict");
    if (key == NULL) {
        Py_DECREF(kb);
        if (PyErr_ExceptionMatches(PyExc_UnicodeDecodeError)) {
            PyErr_Clear();
        }
        return NULL;
    }
    PyUnicode_InternInPlace(&key);
    if (PyDict_GET_SIZE(keys) >= KEY_TABLE_MAX)
        PyDict_Clear(keys);
    int rc = PyDict_SetItem(keys, kb, key);
    Py_DECREF(kb);
    if (rc < 0) {
        Py_DECREF(key);
        return NULL;
    }
    return key;
}

/* The Op of a canonical Data row, Py_None (new ref) when the row is not one, NULL on error. */
static PyObject *decode_row(PyObject *op_id, PyObject *data, PyObject *edge, PyObject *keys) {
    if (!PyBytes_CheckExact(op_id) || PyBytes_GET_SIZE(op_id) != 32 || !PyBytes_CheckExact(data) ||
        Py_TYPE(edge) != edge_cls.type)
        Py_RETURN_NONE;
    if (!edge_complete(edge) || !PyTuple_CheckExact(SLOT(edge, edge_off[0])))
        Py_RETURN_NONE;
    PyObject *parents = SLOT(edge, edge_off[0]), *author = SLOT(edge, edge_off[1]);
    PyObject *ms = SLOT(edge, edge_off[2]), *logical = SLOT(edge, edge_off[3]), *node = SLOT(edge, edge_off[4]);
    Cur c = {(const unsigned char *)PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), 0};
    Py_ssize_t np = PyTuple_GET_SIZE(parents);
    if (!LIT(&c, "\xa3" "fheader" "\xa4" "gparents") || !head_is(&c, 4, (unsigned long long)np))
        Py_RETURN_NONE;
    for (Py_ssize_t i = 0; i < np; i++)
        if (!array_is(&c, PyTuple_GET_ITEM(parents, i)))
            Py_RETURN_NONE;
    if (!LIT(&c, "chlc" "\xa3" "kphysical_ms") || !uint_is(&c, ms) || !LIT(&c, "glogical") ||
        !uint_is(&c, logical) || !LIT(&c, "gnode_id") || !uint_is(&c, node) || !LIT(&c, "iauthor_pk") ||
        !array_is(&c, author) || !LIT(&c, "gpayload" "\xa1" "dData" "\xa2" "ckey"))
        Py_RETURN_NONE;
    unsigned long long klen, vlen;
    if (!head(&c, 3, &klen) || klen > (unsigned long long)(c.n - c.p))
        Py_RETURN_NONE;
    const char *kp = (const char *)c.d + c.p;
    c.p += (Py_ssize_t)klen;
    if (!LIT(&c, "evalue") || !head(&c, 4, &vlen) || vlen > (unsigned long long)(c.n - c.p))
        Py_RETURN_NONE;
    PyObject *value = PyBytes_FromStringAndSize(NULL, (Py_ssize_t)vlen);
    if (value == NULL)
        return NULL;
    PyObject *sig = PyBytes_FromStringAndSize(NULL, 64);
    if (sig == NULL) {
        Py_DECREF(value);
        return NULL;
    }
    unsigned char idb[32];
    if (!items(&c, (Py_ssize_t)vlen, (unsigned char *)PyBytes_AS_STRING(value)) || !LIT(&c, "csig" "\x98" "@") ||
        !items(&c, 64, (unsigned char *)PyBytes_AS_STRING(sig)) || !LIT(&c, "eop_id" "\x98" " ") ||
        !items(&c, 32, idb) || c.p != c.n || memcmp(idb, PyBytes_AS_STRING(op_id), 32) != 0) {
        Py_DECREF(value);
        Py_DECREF(sig);
        Py_RETURN_NONE;
    }
    PyObject *key = data_key(keys, kp, (Py_ssize_t)klen);
    if (key == NULL) {
        Py_DECREF(value);
        Py_DECREF(sig);
        if (PyErr_Occurred())
            return NULL;
        Py_RETURN_NONE; /* not UTF-8: the strict decoder names it */
    }
    PyObject *dv[2] = {key, value};
    PyObject *payload = build(&data_cls, dv);
    Py_DECREF(key);
    Py_DECREF(value);
    PyObject *op = payload == NULL ? NULL : op_from_edge(edge, payload, sig, op_id, data);
    Py_XDECREF(payload);
    Py_DECREF(sig);
    return op;
}

PyDoc_STRVAR(scan_doc,
             "scan(rows, edges, positions, out) -> (placed, rest)\n\n"
             "For each (op_id, data) of the iterable rows whose op_id has a position below len(out):\n"
             "decode it when it is a canonical Data row matching edges[op_id] and store the Op at\n"
             "out[positions[op_id]] (which must hold None); other such rows are returned in rest\n"
             "as (op_id, data) pairs, in scan order. All other rows are skipped.");

static PyObject *scan(PyObject *self, PyObject *args) {
    PyObject *rows, *edges, *positions, *out;
    if (!PyArg_ParseTuple(args, "OO!O!O!", &rows, &PyDict_Type, &edges, &PyDict_Type, &positions, &PyList_Type,
                          &out))
        return NULL;
    if (op_cls.type == NULL || edge_cls.type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "ecac._native: configure_ops() and configure_edges() must be called first");
        return NULL;
    }
    PyObject *it = PyObject_GetIter(rows);
    if (it == NULL)
        return NULL;
    PyObject *rest = PyList_New(0);
    PyObject *keys = rest == NULL ? NULL : PyDict_New(); /* this call's Data-key table */
    if (keys == NULL) {
        Py_XDECREF(rest);
        Py_DECREF(it);
        return NULL;
    }
    Py_ssize_t placed = 0;
    PyObject *row;
    while ((row = PyIter_Next(it)) != NULL) {
        if (!PyTuple_Check(row) || PyTuple_GET_SIZE(row) != 2) {
            PyErr_SetString(PyExc_TypeError, "scan: rows must be (op_id, data) pairs");
            goto fail_row;
        }
        PyObject *op_id = PyTuple_GET_ITEM(row, 0), *data = PyTuple_GET_ITEM(row, 1);
        PyObject *pos = PyDict_GetItemWithError(positions, op_id);
        if (pos == NULL) {
            if (PyErr_Occurred())
                goto fail_row;
            Py_DECREF(row);
            continue;
        }
        Py_ssize_t i = PyLong_AsSsize_t(pos);
        if (i == -1 && PyErr_Occurred())
            goto fail_row;
        if (i >= PyList_GET_SIZE(out)) { /* a live positions map may hold ops added after out was sized */
            Py_DECREF(row);
            continue;
        }
        if (i < 0 || PyList_GET_ITEM(out, i) != Py_None) {
            PyErr_SetString(PyExc_ValueError, "scan: negative position or position already filled");
            goto fail_row;
        }
        PyObject *edge = PyDict_GetItemWithError(edges, op_id);
        PyObject *op = NULL;
        if (edge != NULL) {
            Py_INCREF(edge); /* borrowed from the dict: keep it alive while objects are allocated */
            op = decode_row(op_id, data, edge, keys);
            Py_DECREF(edge);
            if (op == NULL)
                goto fail_row;
        } else if (PyErr_Occurred()) {
            goto fail_row;
        }
        if (op == NULL || op == Py_None) {
            Py_XDECREF(op);
            if (PyList_Append(rest, row) < 0)
                goto fail_row;
        } else {
            PyObject *old = PyList_GET_ITEM(out, i);
            PyList_SET_ITEM(out, i, op);
            Py_DECREF(old);
            placed++;
        }
        Py_DECREF(row);
    }
    Py_DECREF(it);
    Py_DECREF(keys);
    if (PyErr_Occurred()) {
        Py_DECREF(rest);
        return NULL;
    }
    return Py_BuildValue("(nN)", placed, rest);
fail_row:
    Py_DECREF(row);
    Py_DECREF(it);
    Py_DECREF(keys);
    Py_DECREF(rest);
    return NULL;
}

PyDoc_STRVAR(skeletons_doc,
             "skeletons(ids, edges, payload, sig, cbor) -> list[Op]\n\n"
             "An Op per id with the header fields of edges[id] and the given payload, sig and\n"
             "cbor: the prefix of a resumed replay, whose Data payloads are never read.\n"
             "KeyError(id) when an id has no edges row.");

static PyObject *skeletons(PyObject *self, PyObject *args) {
    PyObject *ids, *edges, *payload, *sig, *cbor;
    if (!PyArg_ParseTuple(args, "O!O!OOO", &PyList_Type, &ids, &PyDict_Type, &edges, &payload, &sig, &cbor))
        return NULL;
    if (op_cls.type == NULL || edge_cls.type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "ecac._native: configure_ops() and configure_edges() must be called first");
        return NULL;
    }
    Py_ssize_t n = PyList_GET_SIZE(ids);
    PyObject *out = PyList_New(n);
    if (out == NULL)
        return NULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *op_id = PyList_GET_ITEM(ids, i);
        PyObject *edge = PyDict_GetItemWithError(edges, op_id);
        if (edge == NULL || Py_TYPE(edge) != edge_cls.type || !edge_complete(edge)) {
            if (!PyErr_Occurred())
                PyErr_SetObject(PyExc_KeyError, op_id);
            Py_DECREF(out);
            return NULL;
        }
        Py_INCREF(edge); /* borrowed from the dict: keep its fields alive while objects are allocated */
        PyObject *op = op_from_edge(edge, payload, sig, op_id, cbor);
        Py_DECREF(edge);
        if (op == NULL) {
            Py_DECREF(out);
            return NULL;
        }
        PyList_SET_ITEM(out, i, op);
    }
    return out;
}

/* ---------------------------------------------------------------- DAG chain extension */

static Py_ssize_t node_off[10];
static SlotClass node_cls = {NULL, node_off, 10};
static const char *const NODE_FIELDS[] = {"chain", "children", "deg", "filt", "floor",
                                          "gen", "idx", "op", "pos", "summary"};
enum { N_CHAIN, N_CHILDREN, N_DEG, N_FILT, N_FLOOR, N_GEN, N_IDX, N_OP, N_POS, N_SUMMARY };

static PyObject *configure_dag(PyObject *self, PyObject *node_t) {
    if (configure_class(&node_cls, node_t, NODE_FIELDS) < 0)
        return NULL;
    Py_RETURN_NONE;
}

/* n + 1 for an int object n; NULL with an error set on failure. */
static PyObject *plus_one(PyObject *n) {
    Py_ssize_t v = PyLong_AsSsize_t(n);
    if (v == -1 && PyErr_Occurred())
        return NULL;
    return PyLong_FromSsize_t(v + 1);
}

/* Link child under parent's children slot: None -> the node, a node -> [node, child], a list -> append. */
static int link_child(PyObject *parent, PyObject *child) {
    PyObject *ch = SLOT(parent, node_off[N_CHILDREN]);
    if (ch == NULL || ch == Py_None) {
        SLOT(parent, node_off[N_CHILDREN]) = Py_NewRef(child);
        Py_XDECREF(ch);
        return 0;
    }
    if (Py_TYPE(ch) == node_cls.type) {
        PyObject *pair = PyList_New(2);
        if (pair == NULL)
            return -1;
        PyList_SET_ITEM(pair, 0, ch); /* steals the slot's reference */
        PyList_SET_ITEM(pair, 1, Py_NewRef(child));
        SLOT(parent, node_off[N_CHILDREN]) = pair;
        return 0;
    }
    if (PyList_Check(ch))
        return PyList_Append(ch, child);
    PyErr_SetString(PyExc_TypeError, "extend_chains: a node's children slot holds neither a node nor a list");
    return -1;
}

PyDoc_STRVAR(extend_chains_doc,
             "extend_chains(ops, start, nodes, chains, order, unplaced) -> int\n\n"
             "ecac.dag's common activation, in bulk: from ops[start] on, while an op has exactly one\n"
             "parent, is not in nodes, and that parent's node is the tail of its chain, append a new\n"
             "node extending that chain (index and generation + 1, the parent's summary, floor and\n"
             "filter shared), link it as the parent's child and register it in nodes. With order a\n"
             "list, the op is appended to it and the node's pos is its position; with None, pos is\n"
             "unplaced. Returns the index of the first op it left to the caller (len(ops) if none).");

static PyObject *extend_chains(PyObject *self, PyObject *args) {
    PyObject *ops, *nodes, *chains, *order, *unplaced;
    Py_ssize_t start;
    if (!PyArg_ParseTuple(args, "O!nO!O!OO", &PyList_Type, &ops, &start, &PyDict_Type, &nodes, &PyList_Type,
                          &chains, &order, &unplaced))
        return NULL;
    if (node_cls.type == NULL || op_cls.type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "ecac._native: configure_ops() and configure_dag() must be called first");
        return NULL;
    }
    if (order != Py_None && !PyList_Check(order)) {
        PyErr_SetString(PyExc_TypeError, "extend_chains: order must be a list or None");
        return NULL;
    }
    static PyObject *zero = NULL;
    if (zero == NULL && (zero = PyLong_FromLong(0)) == NULL)
        return NULL;
    Py_ssize_t i = start < 0 ? 0 : start;
    for (; i < PyList_GET_SIZE(ops); i++) {
        PyObject *op = PyList_GET_ITEM(ops, i);
        if (Py_TYPE(op) != op_cls.type)
            break;
        PyObject *op_id = SLOT(op, op_off[5]), *parents = SLOT(op, op_off[0]);
        if (op_id == NULL || parents == NULL || !PyTuple_CheckExact(parents) || PyTuple_GET_SIZE(parents) != 1)
            break;
        int known = PyDict_Contains(nodes, op_id);
        if (known < 0)
            return NULL;
        if (known)
            break;
        PyObject *first = PyDict_GetItemWithError(nodes, PyTuple_GET_ITEM(parents, 0));
        if (first == NULL) {
            if (PyErr_Occurred())
                return NULL;
            break;
        }
        if (Py_TYPE(first) != node_cls.type)
            break;
        PyObject *chain = SLOT(first, node_off[N_CHAIN]);
        Py_ssize_t c = chain == NULL ? -1 : PyLong_AsSsize_t(chain);
        if (c == -1 && PyErr_Occurred())
            return NULL;
        if (c < 0 || c >= PyList_GET_SIZE(chains))
            break;
        PyObject *line = PyList_GET_ITEM(chains, c);
        if (!PyList_Check(line) || PyList_GET_SIZE(line) == 0 || PyList_GET_ITEM(line, PyList_GET_SIZE(line) - 1) != first)
            break; /* the parent is not its chain's tail (a fork): the general path */
        Py_INCREF(first);
        PyObject *idx = plus_one(SLOT(first, node_off[N_IDX]));
        PyObject *gen = idx == NULL ? NULL : plus_one(SLOT(first, node_off[N_GEN]));
        PyObject *pos = gen == NULL ? NULL
                        : order == Py_None ? Py_NewRef(unplaced)
                                           : PyLong_FromSsize_t(PyList_GET_SIZE(order));
        PyObject *node = NULL;
        if (pos != NULL) {
            PyObject *vals[10];
            vals[N_CHAIN] = chain;
            vals[N_CHILDREN] = Py_None;
            vals[N_DEG] = zero;
            vals[N_FILT] = SLOT(first, node_off[N_FILT]);
            vals[N_FLOOR] = SLOT(first, node_off[N_FLOOR]);
            vals[N_GEN] = gen;
            vals[N_IDX] = idx;
            vals[N_OP] = op;
            vals[N_POS] = pos;
            vals[N_SUMMARY] = SLOT(first, node_off[N_SUMMARY]);
            int complete = 1;
            for (int k = 0; k < 10; k++)
                complete &= vals[k] != NULL;
            node = complete ? build(&node_cls, vals) : NULL;
            if (!complete)
                PyErr_SetString(PyExc_RuntimeError, "extend_chains: a parent node has an unset slot");
        }
        Py_XDECREF(idx);
        Py_XDECREF(gen);
        Py_XDECREF(pos);
        int rc = node == NULL ? -1 : PyList_Append(line, node);
        if (rc == 0)
            rc = link_child(first, node);
        if (rc == 0)
            rc = PyDict_SetItem(nodes, op_id, node);
        if (rc == 0 && order != Py_None)
            rc = PyList_Append(order, op);
        Py_DECREF(first);
        Py_XDECREF(node);
        if (rc < 0)
            return NULL;
    }
    return PyLong_FromSsize_t(i);
}

/* ---------------------------------------------------------------- batch Ed25519 */

typedef int (*verify_fn)(const unsigned char *sig, const unsigned char *m, unsigned long long mlen,
                         const unsigned char *pk);
/* libsodium's crypto_sign_verify_detached, from the copy PyNaCl loaded. Resolved on the first
 * verify_batch call, never at import. Written and read only with the GIL held: two threads that
 * both find it unset (the imports below may let another thread run) both store the same pointer. */
static verify_fn sodium_verify = NULL;

/* The verify function, resolving it on first use; NULL with an error set on failure. */
static verify_fn resolve_sodium(void) {
    if (sodium_verify != NULL)
        return sodium_verify;
    PyObject *bindings = PyImport_ImportModule("nacl.bindings"); /* runs sodium_init() */
    if (bindings == NULL)
        return NULL;
    Py_DECREF(bindings);
    PyObject *mod = PyImport_ImportModule("nacl._sodium");
    if (mod == NULL)
        return NULL;
    PyObject *file = PyObject_GetAttrString(mod, "__file__");
    Py_DECREF(mod);
    if (file == NULL)
        return NULL;
    PyObject *path = NULL;
    if (!PyUnicode_FSConverter(file, &path)) {
        Py_DECREF(file);
        return NULL;
    }
    Py_DECREF(file);
    const char *p = PyBytes_AS_STRING(path);
    void *h = dlopen(p, RTLD_NOW | RTLD_NOLOAD); /* already loaded by PyNaCl; the handle is kept */
    if (h == NULL) {
        PyErr_Format(PyExc_RuntimeError, "ecac._native: %s is not loaded (%s)", p, dlerror());
        Py_DECREF(path);
        return NULL;
    }
    void *f = dlsym(h, "crypto_sign_verify_detached");
    if (f == NULL) {
        PyErr_Format(PyExc_RuntimeError, "ecac._native: no crypto_sign_verify_detached in %s", p);
        Py_DECREF(path);
        return NULL;
    }
    Py_DECREF(path);
    sodium_verify = (verify_fn)f;
    return sodium_verify;
}

PyDoc_STRVAR(verify_batch_doc,
             "verify_batch(items) -> list[bool]\n\n"
             "Ed25519 (libsodium, strict) of each (public_key, signature, message) triple, with the\n"
             "GIL released for the whole batch. Anything but a 32-byte key, a 64-byte signature and\n"
             "a bytes message gives False; an item that is not a 3-tuple raises TypeError.");

static PyObject *verify_batch(PyObject *self, PyObject *arg) {
    verify_fn verify = resolve_sodium();
    if (verify == NULL)
        return NULL;
    PyObject *items = PySequence_Tuple(arg); /* immutable: its bytes stay alive without the GIL */
    if (items == NULL)
        return NULL;
    Py_ssize_t n = PyTuple_GET_SIZE(items);
    const unsigned char **ptr = PyMem_Malloc(sizeof(*ptr) * 3 * (size_t)(n ? n : 1));
    unsigned long long *mlen = PyMem_Malloc(sizeof(*mlen) * (size_t)(n ? n : 1));
    char *ok = PyMem_Malloc((size_t)(n ? n : 1));
    PyObject *out = NULL;
    if (ptr == NULL || mlen == NULL || ok == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *t = PyTuple_GET_ITEM(items, i);
        if (!PyTuple_CheckExact(t) || PyTuple_GET_SIZE(t) != 3) {
            PyErr_Format(PyExc_TypeError, "verify_batch: item %zd is not a (key, sig, message) triple", i);
            goto done;
        }
        PyObject *pk = PyTuple_GET_ITEM(t, 0), *sig = PyTuple_GET_ITEM(t, 1), *msg = PyTuple_GET_ITEM(t, 2);
        ok[i] = PyBytes_Check(pk) && PyBytes_Check(sig) && PyBytes_Check(msg) && PyBytes_GET_SIZE(pk) == 32 &&
                PyBytes_GET_SIZE(sig) == 64;
        if (!ok[i])
            continue;
        ptr[3 * i] = (const unsigned char *)PyBytes_AS_STRING(pk);
        ptr[3 * i + 1] = (const unsigned char *)PyBytes_AS_STRING(sig);
        ptr[3 * i + 2] = (const unsigned char *)PyBytes_AS_STRING(msg);
        mlen[i] = (unsigned long long)PyBytes_GET_SIZE(msg);
    }
    Py_BEGIN_ALLOW_THREADS
    for (Py_ssize_t i = 0; i < n; i++)
        if (ok[i])
            ok[i] = verify(ptr[3 * i + 1], ptr[3 * i + 2], mlen[i], ptr[3 * i]) == 0;
    Py_END_ALLOW_THREADS
    out = PyList_New(n);
    if (out == NULL)
        goto done;
    for (Py_ssize_t i = 0; i < n; i++)
        PyList_SET_ITEM(out, i, PyBool_FromLong(ok[i]));
done:
    PyMem_Free(ptr);
    PyMem_Free(mlen);
    PyMem_Free(ok);
    Py_DECREF(items);
    return out;
}

/* ------------------------------------------------------------------------------------------------
 * 4. CBOR structure bounds (cbor_extent): ecac.core.codec.cbor_extent, for every decode of
 *    untrusted bytes. Walks one item without building anything and returns (end, items, cost),
 *    cost estimating the bytes of the objects cbor2 would build (the COST_* constants of
 *    ecac.core.codec, repeated below); refuses malformed or truncated input, declared lengths
 *    longer than the rest of the input, nesting deeper than max_depth, tags, and a cost above
 *    max_cost (as soon as it is reached). Same results and messages as the Python version
 *    (_cbor_extent_py), which the tests compare it with. The GIL is released while it scans.
 */
enum {
    COST_SLOT = 8, COST_INT = 32, COST_FLOAT = 24, COST_SIMPLE = 48, COST_BYTES = 33, COST_ASCII = 49,
    COST_TEXT = 80, COST_LIST = 56, COST_LIST_SLACK = 32, COST_DICT = 64, COST_DICT_KEYS = 160, COST_ENTRY = 48
};
enum { SCAN_OK, SCAN_TRUNC, SCAN_TRUNC_HEAD, SCAN_TRUNC_STR, SCAN_LONG, SCAN_BREAK_KEY, SCAN_BREAK, SCAN_RESERVED, SCAN_CHUNK, SCAN_DEEP,
       SCAN_TAG, SCAN_COST };
#define MAX_SCAN_DEPTH 4096

typedef struct {
    int code;
    Py_ssize_t at, at2;
    unsigned long long val;
} ScanErr;

static int is_ascii(const unsigned char *s, unsigned long long n) {
    for (unsigned long long i = 0; i < n; i++)
        if (s[i] & 0x80)
            return 0;
    return 1;
}

/* Reads the argument of the head at d[*p] (info already known < 28); returns 0 if truncated. */
static int scan_arg(const unsigned char *d, Py_ssize_t end, Py_ssize_t *p, int info, unsigned long long *v) {
    if (info < 24) {
        *v = (unsigned long long)info;
        return 1;
    }
    int w = 1 << (info - 24);
    if (end - *p < w)
        return 0;
    unsigned long long x = 0;
    for (int i = 0; i < w; i++)
        x = (x << 8) | d[*p + i];
    *p += w;
    *v = x;
    return 1;
}

static Py_ssize_t scan_item(const unsigned char *d, Py_ssize_t end, Py_ssize_t p, long long *stack, int max_depth,
                            unsigned long long max_cost, unsigned long long *items_out,
                            unsigned long long *cost_out, ScanErr *err) {
    unsigned long long items = 0, cost = 0;
    int depth = 0;
    long long remaining = 1; /* -1 indefinite array, -2/-3 indefinite map before a key/value */
    for (;;) {
        while (remaining == 0) {
            if (depth == 0) {
                *items_out = items;
                *cost_out = cost;
                return p;
            }
            remaining = stack[--depth];
        }
        if (p >= end) {
            err->code = SCAN_TRUNC;
            err->at = p;
            return -1;
        }
        unsigned char ib = d[p];
        if (ib == 0xFF && remaining < 0) {
            if (remaining == -3) {
                err->code = SCAN_BREAK_KEY;
                err->at = p;
                return -1;
            }
            p += 1;
            remaining = stack[--depth];
            continue;
        }
        Py_ssize_t at = p;
        int major = ib >> 5, info = ib & 0x1F, indefinite = 0;
        unsigned long long arg = 0;
        p += 1;
        if (info < 28) {
            if (!scan_arg(d, end, &p, info, &arg)) {
                err->code = SCAN_TRUNC_HEAD;
                err->at = at;
                err->val = 1ULL << (info - 24);
                return -1;
            }
        } else if (info == 31 && major >= 2 && major <= 5) {
            indefinite = 1;
        } else if (info == 31 && major == 7) {
            err->code = SCAN_BREAK;
            err->at = at;
            return -1;
        } else {
            err->code = SCAN_RESERVED;
            err->at = at;
            err->val = ib;
            return -1;
        }
        items += 1;
        cost += COST_SLOT;
        if (remaining > 0)
            remaining -= 1;
        else if (remaining == -2) {
            remaining = -3;
            cost += COST_ENTRY;
        } else if (remaining == -3)
            remaining = -2;
        if (major <= 1) {
            if (arg > (major == 0 ? 256ULL : 4ULL))
                cost += COST_INT;
        } else if (major <= 3) {
            unsigned long long n = 0;
            int ascii = 1;
            if (indefinite) {
                for (;;) {
                    if (p >= end) {
                        err->code = SCAN_TRUNC_STR;
                        err->at = at;
                        return -1;
                    }
                    unsigned char c = d[p];
                    if (c == 0xFF) {
                        p += 1;
                        break;
                    }
                    if ((c >> 5) != major || (c & 0x1F) > 27) {
                        err->code = SCAN_CHUNK;
                        err->at = p;
                        err->at2 = at;
                        err->val = c;
                        return -1;
                    }
                    Py_ssize_t q = p + 1;
                    unsigned long long k;
                    if (!scan_arg(d, end, &q, c & 0x1F, &k)) {
                        err->code = SCAN_TRUNC_HEAD;
                        err->at = p;
                        err->val = 1ULL << ((c & 0x1F) - 24);
                        return -1;
                    }
                    if (k > (unsigned long long)(end - q)) {
                        err->code = SCAN_LONG;
                        err->at = p;
                        err->val = k;
                        return -1;
                    }
                    if (major == 3 && ascii)
                        ascii = is_ascii(d + q, k);
                    n += k;
                    p = q + (Py_ssize_t)k;
                }
            } else {
                if (arg > (unsigned long long)(end - p)) {
                    err->code = SCAN_LONG;
                    err->at = at;
                    err->val = arg;
                    return -1;
                }
                n = arg;
                if (major == 3)
                    ascii = is_ascii(d + p, n);
                p += (Py_ssize_t)n;
            }
            cost += major == 2 ? COST_BYTES + n : ascii ? COST_ASCII + n : COST_TEXT + 4 * n;
        } else if (major <= 5) {
            if (depth >= max_depth) {
                err->code = SCAN_DEEP;
                err->at = at;
                err->val = (unsigned long long)max_depth;
                return -1;
            }
            if (indefinite) {
                stack[depth++] = remaining;
                remaining = major == 4 ? -1 : -2;
                cost += major == 4 ? COST_LIST_SLACK : COST_DICT_KEYS;
            } else {
                unsigned long long width = major == 4 ? 1 : 2;
                if (arg > (unsigned long long)(end - p) / width) {
                    err->code = SCAN_LONG;
                    err->at = at;
                    err->val = arg;
                    return -1;
                }
                stack[depth++] = remaining;
                remaining = (long long)(arg * width);
                if (arg && major == 4)
                    cost += COST_LIST_SLACK;
                else if (arg)
                    cost += COST_DICT_KEYS + COST_ENTRY * arg;
            }
            cost += major == 4 ? COST_LIST : COST_DICT;
        } else if (major == 6) {
            err->code = SCAN_TAG;
            err->at = at;
            return -1;
        } else {
            cost += (info >= 20 && info <= 23) ? 0 : info >= 25 ? COST_FLOAT : COST_SIMPLE;
        }
        if (cost > max_cost) {
            err->code = SCAN_COST;
            err->at = at;
            err->val = items;
            return -1;
        }
    }
}

static PyObject *scan_error(const ScanErr *e, unsigned long long max_cost) {
    switch (e->code) {
    case SCAN_TRUNC:
        return PyErr_Format(PyExc_ValueError, "truncated: the input ends at byte %zd inside an item", e->at);
    case SCAN_TRUNC_HEAD:
        return PyErr_Format(PyExc_ValueError, "truncated: the head at byte %zd needs %llu more bytes", e->at,
                            e->val);
    case SCAN_TRUNC_STR:
        return PyErr_Format(PyExc_ValueError, "truncated: the indefinite string at byte %zd has no break",
                            e->at);
    case SCAN_LONG:
        return PyErr_Format(PyExc_ValueError, "declared length %llu at byte %zd exceeds the input", e->val,
                            e->at);
    case SCAN_BREAK_KEY:
        return PyErr_Format(PyExc_ValueError, "break at byte %zd after a map key without its value", e->at);
    case SCAN_BREAK:
        return PyErr_Format(PyExc_ValueError, "unexpected break at byte %zd", e->at);
    case SCAN_RESERVED:
        return PyErr_Format(PyExc_ValueError, "reserved head 0x%02x at byte %zd", (int)e->val, e->at);
    case SCAN_CHUNK:
        return PyErr_Format(PyExc_ValueError, "bad chunk 0x%02x at byte %zd of the string at byte %zd",
                            (int)e->val, e->at, e->at2);
    case SCAN_DEEP:
        return PyErr_Format(PyExc_ValueError, "nesting deeper than %llu at byte %zd", e->val, e->at);
    case SCAN_TAG:
        return PyErr_Format(PyExc_ValueError, "CBOR tag at byte %zd: no ecac format uses tags", e->at);
    default:
        return PyErr_Format(PyExc_ValueError,
                            "decoding would take more than %llu bytes of memory (at byte %zd, %llu items)",
                            max_cost, e->at, e->val);
    }
}

PyDoc_STRVAR(cbor_extent_doc,
             "cbor_extent(data, pos, max_depth, max_cost) -> (end, items, cost) of the CBOR item at pos;\n"
             "ValueError naming the byte when malformed, truncated, too deep, tagged or over max_cost.");

static PyObject *cbor_extent(PyObject *self, PyObject *args) {
    Py_buffer buf;
    Py_ssize_t pos;
    int max_depth;
    unsigned long long max_cost;
    if (!PyArg_ParseTuple(args, "y*niK", &buf, &pos, &max_depth, &max_cost))
        return NULL;
    PyObject *out = NULL;
    if (pos < 0 || pos > buf.len || max_depth < 0 || max_depth > MAX_SCAN_DEPTH) {
        PyErr_Format(PyExc_ValueError, "cbor_extent: pos must be within the input and max_depth in 0..%d",
                     MAX_SCAN_DEPTH);
        goto done;
    }
    long long *stack = PyMem_Malloc(sizeof(long long) * (size_t)(max_depth + 1));
    if (stack == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    ScanErr err = {SCAN_OK, 0, 0, 0};
    unsigned long long items = 0, cost = 0;
    Py_ssize_t end;
    Py_BEGIN_ALLOW_THREADS
    end = scan_item((const unsigned char *)buf.buf, buf.len, pos, stack, max_depth, max_cost, &items, &cost, &err);
    Py_END_ALLOW_THREADS
    PyMem_Free(stack);
    if (end < 0)
        scan_error(&err, max_cost);
    else
        out = Py_BuildValue("nKK", end, items, cost);
done:
    PyBuffer_Release(&buf);
    return out;
}

static PyMethodDef methods[] = {
    {"configure_ops", configure_ops, METH_VARARGS,
     "configure_ops(Op, Hlc, Data): the classes the decoders build."},
    {"configure_edges", configure_edges, METH_O, "configure_edges(EdgeVal): the edges-row class read."},
    {"scan", scan, METH_VARARGS, scan_doc},
    {"skeletons", skeletons, METH_VARARGS, skeletons_doc},
    {"configure_dag", configure_dag, METH_O, "configure_dag(_Node): the DAG node class extend_chains builds."},
    {"extend_chains", extend_chains, METH_VARARGS, extend_chains_doc},
    {"verify_batch", verify_batch, METH_O, verify_batch_doc},
    {"cbor_extent", cbor_extent, METH_VARARGS, cbor_extent_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "ecac._native",
                                    "Bulk decoding of stored Data ops, batch Ed25519 verification, CBOR bounds (see the source's header).", -1,
                                    methods};

PyMODINIT_FUNC PyInit__native(void) { return PyModule_Create(&module); }
