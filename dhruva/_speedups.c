/* dhruva._speedups: optional C versions of a few hot pure-Python functions.
 *
 * Theory of operation (docs/guide/speedups.md).  Every function here has a
 * pure-Python original that stays the reference: dhruva/speedups.py picks
 * this module when it was built and DHRUVA_PURE_PYTHON is unset, and the
 * test suite runs once each way.  A function here never raises an error of
 * its own about the data: where the input is anything but the ordinary case
 * (a short read, a checksum that does not match, an oid that is not the one
 * asked for, a value out of range, a type it does not expect) it returns
 * None, and the caller runs the Python original, whose answer or typed error
 * is the authoritative one.  So the C code can only make the ordinary case
 * faster; it cannot change what an unusual one does.
 *
 * The checksum is CRC-32 (the polynomial of zlib.crc32, reflected,
 * 0xEDB88320), computed here by slicing-by-8 so that the module needs no
 * zlib headers to build.
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* --- CRC-32 ---------------------------------------------------------------- */

static uint32_t crc_table[8][256];

static void
crc_init(void)
{
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = n;
        for (int k = 0; k < 8; k++) {
            c = (c & 1) ? 0xEDB88320u ^ (c >> 1) : c >> 1;
        }
        crc_table[0][n] = c;
    }
    for (uint32_t n = 0; n < 256; n++) {
        uint32_t c = crc_table[0][n];
        for (int k = 1; k < 8; k++) {
            c = crc_table[0][c & 0xFF] ^ (c >> 8);
            crc_table[k][n] = c;
        }
    }
}

/* The running CRC-32 of ``len`` bytes at ``p`` after ``crc`` (zlib.crc32(data, crc)). */
static uint32_t
crc_update(uint32_t crc, const unsigned char *p, Py_ssize_t len)
{
    crc = ~crc;
    while (len >= 8) {
        uint32_t lo = crc ^ ((uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 |
                             (uint32_t)p[3] << 24);
        uint32_t hi = (uint32_t)p[4] | (uint32_t)p[5] << 8 | (uint32_t)p[6] << 16 |
                      (uint32_t)p[7] << 24;
        crc = crc_table[7][lo & 0xFF] ^ crc_table[6][(lo >> 8) & 0xFF] ^
              crc_table[5][(lo >> 16) & 0xFF] ^ crc_table[4][lo >> 24] ^
              crc_table[3][hi & 0xFF] ^ crc_table[2][(hi >> 8) & 0xFF] ^
              crc_table[1][(hi >> 16) & 0xFF] ^ crc_table[0][hi >> 24];
        p += 8;
        len -= 8;
    }
    while (len-- > 0) {
        crc = crc_table[0][(crc ^ *p++) & 0xFF] ^ (crc >> 8);
    }
    return ~crc;
}

static inline uint32_t
get_u32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | (uint32_t)p[3];
}

static inline void
put_u32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static inline void
put_u64(unsigned char *p, uint64_t v)
{
    put_u32(p, (uint32_t)(v >> 32));
    put_u32(p + 4, (uint32_t)v);
}

static PyObject *
speedups_crc32(PyObject *module, PyObject *args)
{
    Py_buffer view;
    unsigned int value = 0;
    if (!PyArg_ParseTuple(args, "y*|I:crc32", &view, &value)) {
        return NULL;
    }
    uint32_t crc = crc_update(value, view.buf, view.len);
    PyBuffer_Release(&view);
    return PyLong_FromUnsignedLong(crc);
}

/* --- records --------------------------------------------------------------- */

/* Set by configure(): dhruva.record.Record, pickle.loads, and the exceptions
 * of a pickle.loads failure that read_pickle_state hands to its fallback. */
static PyTypeObject *record_type = NULL;
static PyObject *pickle_loads = NULL;
static PyObject *loads_errors = NULL;

static PyObject *
speedups_configure(PyObject *module, PyObject *args)
{
    PyObject *record, *loads, *errors;
    if (!PyArg_ParseTuple(args, "O!OO!:configure", &PyType_Type, &record, &loads, &PyTuple_Type,
                          &errors)) {
        return NULL;
    }
    if (!PyType_IsSubtype((PyTypeObject *)record, &PyTuple_Type) || !PyCallable_Check(loads)) {
        PyErr_SetString(PyExc_TypeError,
                        "configure(Record, pickle.loads, errors): a tuple type, a callable");
        return NULL;
    }
    Py_INCREF(record);
    Py_XSETREF(record_type, (PyTypeObject *)record);
    Py_INCREF(loads);
    Py_XSETREF(pickle_loads, loads);
    Py_INCREF(errors);
    Py_XSETREF(loads_errors, errors);
    Py_RETURN_NONE;
}

static PyObject *
new_record(PyObject *oid, const unsigned char *data, Py_ssize_t data_length,
           const unsigned char *refs, Py_ssize_t refs_length)
{
    PyObject *record = record_type->tp_alloc(record_type, 3);
    if (record == NULL) {
        return NULL;
    }
    PyObject *data_obj = PyBytes_FromStringAndSize((const char *)data, data_length);
    PyObject *refs_obj = PyBytes_FromStringAndSize((const char *)refs, refs_length);
    if (data_obj == NULL || refs_obj == NULL) {
        Py_XDECREF(data_obj);
        Py_XDECREF(refs_obj);
        Py_DECREF(record);
        return NULL;
    }
    Py_INCREF(oid);
    PyTuple_SET_ITEM(record, 0, oid);
    PyTuple_SET_ITEM(record, 1, data_obj);
    PyTuple_SET_ITEM(record, 2, refs_obj);
    return record;
}

/* pread() all of ``length`` bytes, or fewer at the end of the file; -1 on an error. */
static Py_ssize_t
pread_full(int fd, unsigned char *buf, Py_ssize_t length, long long offset)
{
    Py_ssize_t got = 0;
    while (got < length) {
        ssize_t n;
        Py_BEGIN_ALLOW_THREADS
        n = pread(fd, buf + got, (size_t)(length - got), (off_t)(offset + got));
        Py_END_ALLOW_THREADS
        if (n < 0) {
            return -1; /* EINTR included: the Python path retries and checks signals */
        }
        if (n == 0) {
            break;
        }
        got += n;
    }
    return got;
}

/* The first read of a load at most: journal_storage.LOAD_READ_BYTES, the same (a test
 * checks).  Most object records fit; reading 4096 bytes cost a third more than 1024. */
#define FIRST_READ 1024
/* The first read adapts between FIRST_READ_MIN and FIRST_READ: after
 * FIRST_READ_STREAK records in a row that fit in half of it, it halves; a
 * record that does not fit (a second pread) sets it back to FIRST_READ.  A
 * file of small records is then read 256 bytes at a time (a random cold read
 * of a 140-byte record cost about 0.1 us less than with 1024). */
#define FIRST_READ_MIN 256
#define FIRST_READ_STREAK 32
static Py_ssize_t first_read = FIRST_READ;
static int first_read_streak = 0;

/* Adapt first_read to a record of ``size`` bytes read with a first read of ``asked``. */
static inline void
first_read_learn(uint64_t size, Py_ssize_t asked)
{
    if (size > (uint64_t)asked) {
        first_read = FIRST_READ;
        first_read_streak = 0;
    }
    else if (size <= (uint64_t)asked / 2 && asked > FIRST_READ_MIN) {
        if (++first_read_streak >= FIRST_READ_STREAK) {
            first_read = asked / 2;
            first_read_streak = 0;
        }
    }
    else {
        first_read_streak = 0;
    }
}

/* read_record(fd, offset, version, oid) -> Record | None
 *
 * The record at ``offset`` of the data file open on ``fd``, if it is whole,
 * of ``oid``, and (version 2) its checksum matches; None for anything else
 * (JournalStorage.load then reads it again the reference way and raises the
 * error that says what is wrong).  The returned Record's oid is ``oid``
 * itself (its bytes are equal).
 */
static PyObject *
speedups_read_record(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || record_type == NULL) {
        PyErr_SetString(PyExc_TypeError, "read_record(fd, offset, version, oid), once configured");
        return NULL;
    }
    long fd, version;
    long long offset;
    if (((fd = PyLong_AsLong(args[0])) == -1 && PyErr_Occurred()) ||
        ((offset = PyLong_AsLongLong(args[1])) == -1 && PyErr_Occurred()) ||
        ((version = PyLong_AsLong(args[2])) == -1 && PyErr_Occurred())) {
        return NULL;
    }
    PyObject *oid = args[3];
    if (!PyBytes_CheckExact(oid) || PyBytes_GET_SIZE(oid) != 8 || offset < 0 || fd < 0 || fd > INT_MAX) {
        Py_RETURN_NONE;
    }
    Py_ssize_t header_size = version >= 2 ? 20 : 16;
    unsigned char first[FIRST_READ];
    Py_ssize_t asked = first_read; /* read before the pread releases the GIL */
    Py_ssize_t got = pread_full((int)fd, first, asked, offset);
    if (got < header_size) {
        Py_RETURN_NONE;
    }
    if (memcmp(first, PyBytes_AS_STRING(oid), 8) != 0) {
        Py_RETURN_NONE;
    }
    uint64_t data_length = get_u32(first + 8);
    uint64_t ref_count = get_u32(first + 12);
    uint64_t size = (uint64_t)header_size + data_length + 8 * ref_count;
    unsigned char *buf = first;
    unsigned char *big = NULL;
    first_read_learn(size, asked);
    if (size > (uint64_t)got) {
        struct stat status;
        if (got < asked || size > (uint64_t)PY_SSIZE_T_MAX || fstat((int)fd, &status) != 0 ||
            (uint64_t)offset + size > (uint64_t)status.st_size) {
            /* The file ends inside the record: a damaged length must not
             * allocate up to 36 GiB before the checksum refuses it. */
            Py_RETURN_NONE;
        }
        big = PyMem_Malloc((size_t)size);
        if (big == NULL) {
            return PyErr_NoMemory();
        }
        if (pread_full((int)fd, big, (Py_ssize_t)size, offset) != (Py_ssize_t)size) {
            PyMem_Free(big);
            Py_RETURN_NONE;
        }
        buf = big;
    }
    PyObject *result;
    const unsigned char *data = buf + header_size;
    Py_ssize_t refs_length = (Py_ssize_t)(8 * ref_count);
    if (version >= 2) {
        uint32_t crc = crc_update(0, buf, 16);
        crc = crc_update(crc, data, (Py_ssize_t)data_length + refs_length);
        if (crc != get_u32(buf + 16)) {
            PyMem_Free(big);
            Py_RETURN_NONE;
        }
    }
    result = new_record(oid, data, (Py_ssize_t)data_length, data + data_length, refs_length);
    PyMem_Free(big);
    return result;
}

/* first_read() -> the size of read_record's next first read (it adapts). */
static PyObject *
speedups_first_read(PyObject *module, PyObject *unused)
{
    return PyLong_FromSsize_t(first_read);
}

/* --- the on-disk index ------------------------------------------------------ */

#define INDEX_ENTRIES_OFFSET (3 * 4096)
#define INDEX_ADDED_FLAG ((uint64_t)1 << 63)

/* index_offset(mapping, oid, last, covered_offset) -> int | None
 *
 * DiskIndex.lookup_oid's answer from the index file's read-only map: the
 * data-file offset of ``oid``'s record, 0 when the index has none (oid number
 * beyond ``last``, no entry, or an entry an interrupted checkpoint left at or
 * past ``covered_offset``, IDX-022).  None when ``oid`` is not 8 bytes or the
 * map does not hold the entry (the caller looks it up the Python way).
 */
static PyObject *
speedups_index_offset(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "index_offset(mapping, oid, last, covered_offset)");
        return NULL;
    }
    PyObject *oid = args[1];
    long long last;
    unsigned long long covered;
    if (((last = PyLong_AsLongLong(args[2])) == -1 && PyErr_Occurred()) ||
        ((covered = PyLong_AsUnsignedLongLong(args[3])) == (unsigned long long)-1 &&
         PyErr_Occurred())) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    if (!PyBytes_CheckExact(oid) || PyBytes_GET_SIZE(oid) != 8) {
        Py_RETURN_NONE;
    }
    const unsigned char *o = (const unsigned char *)PyBytes_AS_STRING(oid);
    uint64_t number = (uint64_t)get_u32(o) << 32 | get_u32(o + 4);
    if (last < 0 || number > (uint64_t)last) {
        return PyLong_FromLong(0);
    }
    Py_buffer view;
    if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    uint64_t position = INDEX_ENTRIES_OFFSET + number * 8;
    if (number > (uint64_t)PY_SSIZE_T_MAX / 8 || position + 8 > (uint64_t)view.len) {
        PyBuffer_Release(&view);
        Py_RETURN_NONE;
    }
    const unsigned char *e = (const unsigned char *)view.buf + position;
    uint64_t raw = (uint64_t)get_u32(e) << 32 | get_u32(e + 4);
    PyBuffer_Release(&view);
    if (raw & INDEX_ADDED_FLAG) {
        raw &= ~INDEX_ADDED_FLAG;
        if (raw >= covered) {
            raw = 0;
        }
    }
    return PyLong_FromUnsignedLongLong(raw);
}

/* --- transactions ----------------------------------------------------------- */

/* file_load(storage, fallback, osfile_type, oid) -> Record
 *
 * FileStorage.load without a Python frame: the oid's offset from
 * ``storage._index`` (the tail) or the ``.index`` file's map
 * (index_offset), then the record (read_record).  Anything else (a closed
 * or broken storage, a file layer other than ``osfile_type``, an oid the
 * index does not hold, a record read_record hands back, any error on the
 * way) is ``fallback(storage, oid)``: JournalStorage.load, which answers or
 * raises the typed error.
 */
/* --- attributes read from an instance's __dict__ --------------------------------
 *
 * A lookup of an instance attribute goes through the type (for a data
 * descriptor) before the instance's __dict__; when the type has no data
 * descriptor of a name, the __dict__ is where the lookup finds it, and a
 * dict lookup is a third of the cost.  The verdict for a type is kept with
 * its version tag, which any change to the type or its bases replaces. */
typedef struct {
    PyTypeObject *type; /* compared only, never dereferenced once stale */
    unsigned int version;
    int safe;
} dict_reads;

/* ``obj``'s __dict__ (a new reference) when none of ``names`` is a data descriptor of
 * its type, else NULL; no error set either way. */
static PyObject *
instance_dict(dict_reads *cache, PyObject *obj, PyObject *const *names, int count)
{
    PyTypeObject *type = Py_TYPE(obj);
    if (cache->type != type || cache->version != type->tp_version_tag ||
        !PyType_HasFeature(type, Py_TPFLAGS_VALID_VERSION_TAG)) {
        int safe = type->tp_dictoffset != 0;
        for (int i = 0; safe && i < count; i++) {
            PyObject *descr = names[i] == NULL ? NULL : _PyType_Lookup(type, names[i]);
            safe = names[i] != NULL && (descr == NULL || Py_TYPE(descr)->tp_descr_set == NULL);
        }
        cache->type = type;
        cache->version = type->tp_version_tag;
        cache->safe = safe && PyType_HasFeature(type, Py_TPFLAGS_VALID_VERSION_TAG);
    }
    if (!cache->safe) {
        return NULL;
    }
    PyObject *d = PyObject_GenericGetDict(obj, NULL);
    if (d == NULL) {
        PyErr_Clear();
    }
    else if (!PyDict_CheckExact(d)) {
        Py_CLEAR(d);
    }
    return d;
}

/* The attribute ``name`` of ``obj``, from its __dict__ ``d`` when there (``d`` may be NULL),
 * else by PyObject_GetAttr; a new reference, or NULL with the error. */
static PyObject *
dict_get(PyObject *d, PyObject *obj, PyObject *name)
{
    if (d != NULL) {
        PyObject *value = PyDict_GetItemWithError(d, name);
        if (value != NULL) {
            return Py_NewRef(value);
        }
        if (PyErr_Occurred()) {
            return NULL;
        }
    }
    return PyObject_GetAttr(obj, name);
}

enum {
    FL_FILE, FL_BROKEN, FL_INDEX, FL_DISK, FL_MAP, FL_CAPACITY, FL_COVERED, FL_LAST, FL_FD,
    FL_VERSION, FL_NAMES
};
static const char *const file_load_names[FL_NAMES] = {
    "_file", "_broken", "_index", "_disk", "_map", "_capacity", "covered_offset",
    "_disk_max_oid", "fd", "format_version",
};
static PyObject *file_load_strs[FL_NAMES];

static dict_reads file_load_reads, file_load_disk_reads;
/* The storage's own names and its index's, read from a __dict__ where instance_dict allows. */
static const int file_load_own[] = {FL_FILE, FL_BROKEN, FL_INDEX, FL_DISK, FL_LAST, FL_VERSION};
static const int file_load_disk[] = {FL_MAP, FL_CAPACITY, FL_COVERED};

/* ``obj``'s attribute number ``which`` of file_load_names (from the __dict__ ``d`` when
 * not NULL), or NULL, no error set. */
static PyObject *
file_load_attr(PyObject *d, PyObject *obj, int which)
{
    if (file_load_strs[which] == NULL &&
        (file_load_strs[which] = PyUnicode_InternFromString(file_load_names[which])) == NULL) {
        PyErr_Clear();
        return NULL;
    }
    PyObject *value = dict_get(d, obj, file_load_strs[which]);
    if (value == NULL) {
        PyErr_Clear();
    }
    return value;
}

/* ``obj``'s __dict__ for file_load_attr of the ``count`` names ``which`` (a new
 * reference), or NULL. */
static PyObject *
file_load_dict(dict_reads *cache, PyObject *obj, const int *which, int count)
{
    PyObject *names[FL_NAMES];
    for (int i = 0; i < count; i++) {
        int k = which[i];
        if (file_load_strs[k] == NULL &&
            (file_load_strs[k] = PyUnicode_InternFromString(file_load_names[k])) == NULL) {
            PyErr_Clear();
            return NULL;
        }
        names[i] = file_load_strs[k];
    }
    return instance_dict(cache, obj, names, count);
}

static PyObject *
speedups_file_load(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError, "file_load(storage, fallback, osfile_type, oid)");
        return NULL;
    }
    PyObject *storage = args[0], *oid = args[3];
    PyObject *file = NULL, *index = NULL, *offset = NULL, *fd = NULL, *version = NULL;
    PyObject *record = NULL;
    PyObject *own = NULL;
    if (!PyBytes_CheckExact(oid) || PyBytes_GET_SIZE(oid) != 8) {
        goto fallback;
    }
    own = file_load_dict(&file_load_reads, storage, file_load_own, 6);
    if ((file = file_load_attr(own, storage, FL_FILE)) == NULL || (PyObject *)Py_TYPE(file) != args[2]) {
        goto fallback;
    }
    {
        PyObject *broken = file_load_attr(own, storage, FL_BROKEN);
        int healthy = broken == Py_None;
        Py_XDECREF(broken);
        if (!healthy) {
            goto fallback;
        }
    }
    if ((index = file_load_attr(own, storage, FL_INDEX)) == NULL || !PyDict_CheckExact(index)) {
        goto fallback;
    }
    offset = PyDict_GetItemWithError(index, oid); /* borrowed */
    if (offset != NULL) {
        Py_INCREF(offset);
    }
    else {
        if (PyErr_Occurred()) {
            PyErr_Clear();
            goto fallback;
        }
        PyObject *disk = file_load_attr(own, storage, FL_DISK);
        if (disk == NULL || disk == Py_None) {
            Py_XDECREF(disk);
            goto fallback;
        }
        PyObject *disk_dict = file_load_dict(&file_load_disk_reads, disk, file_load_disk, 3);
        PyObject *mapping = file_load_attr(disk_dict, disk, FL_MAP);
        PyObject *capacity = file_load_attr(disk_dict, disk, FL_CAPACITY);
        PyObject *covered = file_load_attr(disk_dict, disk, FL_COVERED);
        PyObject *last = file_load_attr(own, storage, FL_LAST);
        Py_XDECREF(disk_dict);
        Py_DECREF(disk);
        if (mapping != NULL && mapping != Py_None && capacity != NULL && PyLong_CheckExact(capacity) &&
            covered != NULL && last != NULL && PyLong_CheckExact(last)) {
            long long top = PyLong_AsLongLong(capacity) - 1, highest = PyLong_AsLongLong(last);
            PyObject *bound = NULL;
            if (!PyErr_Occurred()) {
                bound = PyLong_FromLongLong(highest < top ? highest : top);
            }
            if (bound != NULL) {
                PyObject *lookup[4] = {mapping, oid, bound, covered};
                offset = speedups_index_offset(module, lookup, 4);
                Py_DECREF(bound);
            }
        }
        Py_XDECREF(mapping);
        Py_XDECREF(capacity);
        Py_XDECREF(covered);
        Py_XDECREF(last);
        if (offset == NULL) {
            PyErr_Clear();
            goto fallback;
        }
        /* None: the map does not hold the entry; 0: no entry (the fallback raises). */
        if (offset == Py_None || !PyLong_CheckExact(offset) || PyObject_Not(offset)) {
            goto fallback;
        }
    }
    if ((fd = file_load_attr(NULL, file, FL_FD)) == NULL ||
        (version = file_load_attr(own, storage, FL_VERSION)) == NULL) {
        goto fallback;
    }
    {
        PyObject *read[4] = {fd, offset, version, oid};
        record = speedups_read_record(module, read, 4);
    }
    if (record == NULL) {
        PyErr_Clear();
    }
    else if (record == Py_None) {
        Py_CLEAR(record);
    }
fallback:
    Py_XDECREF(own);
    Py_XDECREF(file);
    Py_XDECREF(index);
    Py_XDECREF(offset);
    Py_XDECREF(fd);
    Py_XDECREF(version);
    if (record != NULL) {
        return record;
    }
    PyObject *call[2] = {storage, oid};
    return PyObject_Vectorcall(args[1], call, 2, NULL);
}

/* journal_new_oid(storage, fallback) -> bytes
 *
 * JournalStorage.new_oid in one C call: while the storage is open,
 * healthy and writable (``_file`` not None, ``_broken`` None, ``readonly``
 * False), ``_next_oid`` n becomes n + 1 and n is returned as 8 big-endian
 * bytes.  The four attributes are read from and written to the storage's
 * __dict__, so only for a type with the generic attribute access and no
 * data descriptor of those names; anything else (a closed, broken or
 * read-only storage, a next oid of 2**64 - 1 or past it, another layout) is
 * ``fallback(storage)``, JournalStorage.new_oid, which raises or does it.
 */
enum { NO_FILE, NO_BROKEN, NO_READONLY, NO_NEXT, NO_NAMES };
static const char *const new_oid_names[NO_NAMES] = {"_file", "_broken", "readonly", "_next_oid"};
static PyObject *new_oid_strs[NO_NAMES];
static dict_reads new_oid_reads;

static PyObject *
speedups_journal_new_oid(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "journal_new_oid(storage, fallback)");
        return NULL;
    }
    PyObject *storage = args[0];
    for (int i = 0; i < NO_NAMES; i++) {
        if (new_oid_strs[i] == NULL &&
            (new_oid_strs[i] = PyUnicode_InternFromString(new_oid_names[i])) == NULL) {
            return NULL;
        }
    }
    PyTypeObject *type = Py_TYPE(storage);
    PyObject *d = NULL;
    if (type->tp_getattro == PyObject_GenericGetAttr &&
        type->tp_setattro == PyObject_GenericSetAttr) {
        d = instance_dict(&new_oid_reads, storage, new_oid_strs, NO_NAMES);
    }
    if (d != NULL) {
        PyObject *values[NO_NAMES];
        for (int i = 0; i < NO_NAMES; i++) {
            values[i] = PyDict_GetItemWithError(d, new_oid_strs[i]); /* borrowed */
            if (values[i] == NULL) {
                PyErr_Clear(); /* missing: the fallback says what is wrong */
                goto fallback;
            }
        }
        if (values[NO_FILE] == Py_None || values[NO_BROKEN] != Py_None ||
            values[NO_READONLY] != Py_False || !PyLong_CheckExact(values[NO_NEXT])) {
            goto fallback;
        }
        unsigned long long n = PyLong_AsUnsignedLongLong(values[NO_NEXT]);
        if (n == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Clear(); /* negative or past 2**64: pack_int8 there raises */
            goto fallback;
        }
        if (n == 0xFFFFFFFFFFFFFFFFULL) {
            goto fallback; /* n + 1 would not fit */
        }
        PyObject *next = PyLong_FromUnsignedLongLong(n + 1);
        if (next == NULL) {
            Py_DECREF(d);
            return NULL;
        }
        PyObject *oid = PyBytes_FromStringAndSize(NULL, 8);
        if (oid == NULL || PyDict_SetItem(d, new_oid_strs[NO_NEXT], next) < 0) {
            Py_XDECREF(oid);
            Py_DECREF(next);
            Py_DECREF(d);
            return NULL;
        }
        Py_DECREF(next);
        Py_DECREF(d);
        unsigned char *out = (unsigned char *)PyBytes_AS_STRING(oid);
        for (int i = 7; i >= 0; i--) {
            out[i] = (unsigned char)(n & 0xFF);
            n >>= 8;
        }
        return oid;
    }
fallback:
    Py_XDECREF(d);
    return PyObject_CallOneArg(args[1], storage);
}

/* stage_records(pending, records) -> bool
 *
 * JournalStorage.store_many's step: when ``records`` is a list of exact
 * 3-tuples ``(oid, data, refs)`` of exact bytes, each oid of 8 bytes and
 * each refs a multiple of 8 long (every record store() takes as it is),
 * ``pending[oid] = record`` for each in order, and True.  Otherwise False,
 * with ``pending`` untouched: store() then takes them one by one, and
 * refuses or converts each as it does.
 */
static PyObject *
speedups_stage_records(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyDict_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "stage_records(pending: dict, records)");
        return NULL;
    }
    PyObject *pending = args[0], *records = args[1];
    if (!PyList_CheckExact(records)) {
        Py_RETURN_FALSE;
    }
    Py_ssize_t n = PyList_GET_SIZE(records);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *record = PyList_GET_ITEM(records, i);
        if (!PyTuple_CheckExact(record) || PyTuple_GET_SIZE(record) != 3) {
            Py_RETURN_FALSE;
        }
        PyObject *oid = PyTuple_GET_ITEM(record, 0), *data = PyTuple_GET_ITEM(record, 1);
        PyObject *refs = PyTuple_GET_ITEM(record, 2);
        if (!PyBytes_CheckExact(oid) || PyBytes_GET_SIZE(oid) != 8 || !PyBytes_CheckExact(data) ||
            !PyBytes_CheckExact(refs) || PyBytes_GET_SIZE(refs) % 8 != 0) {
            Py_RETURN_FALSE;
        }
    }
    /* Only type checks ran above: the list and its tuples are as they were. */
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(records); i++) {
        PyObject *record = PyList_GET_ITEM(records, i);
        Py_INCREF(record);
        int failed = PyDict_SetItem(pending, PyTuple_GET_ITEM(record, 0), record);
        Py_DECREF(record);
        if (failed < 0) {
            return NULL;
        }
    }
    Py_RETURN_TRUE;
}

/* Whether every item of the list ``records`` is an exact 3-tuple whose first
 * ``fields`` items are exact bytes (the triples a commit's writer makes). */
static int
byte_triples(PyObject *records, int fields)
{
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(records); i++) {
        PyObject *record = PyList_GET_ITEM(records, i);
        if (!PyTuple_CheckExact(record) || PyTuple_GET_SIZE(record) != 3) {
            return 0;
        }
        for (int k = 0; k < fields; k++) {
            if (!PyBytes_CheckExact(PyTuple_GET_ITEM(record, k))) {
                return 0;
            }
        }
    }
    return 1;
}

/* index_records(index, records, position, header_size) -> bytes | None | False
 *
 * JournalStorage.end()'s index update, once a transaction is durable:
 * ``index[oid] = position`` for each ``(oid, data, refs)`` of the list
 * ``records`` in order, each record's position ``header_size + len(data) +
 * len(refs)`` after the one before it, the first at ``position``.  Returns
 * the greatest oid of the records (``max`` of bytes), None for no records.
 * False, with ``index`` untouched, unless ``index`` is an exact dict and
 * every record an exact 3-tuple of exact bytes: the caller's Python chain
 * then does it.
 */
static PyObject *
speedups_index_records(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || !PyLong_CheckExact(args[2]) || !PyLong_CheckExact(args[3])) {
        PyErr_SetString(PyExc_TypeError, "index_records(index, records, position: int, header_size: int)");
        return NULL;
    }
    PyObject *index = args[0], *records = args[1];
    Py_ssize_t position = PyLong_AsSsize_t(args[2]);
    if (position == -1 && PyErr_Occurred()) {
        return NULL;
    }
    Py_ssize_t header_size = PyLong_AsSsize_t(args[3]);
    if (header_size == -1 && PyErr_Occurred()) {
        return NULL;
    }
    if (!PyDict_CheckExact(index) || !PyList_CheckExact(records) || position < 0 || header_size < 0) {
        Py_RETURN_FALSE;
    }
    Py_ssize_t count = PyList_GET_SIZE(records);
    if (!byte_triples(records, 3)) {
        Py_RETURN_FALSE;
    }
    /* Only type checks ran above; a bytes key's hash and equality run no
     * Python code, so the list and its tuples stay as they were. */
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *record = PyList_GET_ITEM(records, i);
        PyObject *at = PyLong_FromSsize_t(position);
        if (at == NULL) {
            return NULL;
        }
        int failed = PyDict_SetItem(index, PyTuple_GET_ITEM(record, 0), at);
        Py_DECREF(at);
        if (failed < 0) {
            return NULL;
        }
        position += header_size + PyBytes_GET_SIZE(PyTuple_GET_ITEM(record, 1)) +
                    PyBytes_GET_SIZE(PyTuple_GET_ITEM(record, 2));
    }
    /* The greatest oid, compared as bytes are (memcmp, then the shorter first). */
    PyObject *highest = NULL;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *oid = PyTuple_GET_ITEM(PyList_GET_ITEM(records, i), 0);
        if (highest == NULL) {
            highest = oid;
            continue;
        }
        Py_ssize_t a = PyBytes_GET_SIZE(oid), b = PyBytes_GET_SIZE(highest);
        int order = memcmp(PyBytes_AS_STRING(oid), PyBytes_AS_STRING(highest), (size_t)(a < b ? a : b));
        if (order > 0 || (order == 0 && a > b)) {
            highest = oid;
        }
    }
    return Py_NewRef(highest != NULL ? highest : Py_None);
}

/* tail_entries(tail) -> ({number: offset}, greatest number) | None
 *
 * FileStorage.checkpoint's conversion of its tail index: each 8-byte oid key
 * as its big-endian number (struct ">Q"), the offsets as they are, in one
 * presized dict, with the greatest number (str_to_int8(max(tail))).  None for
 * an empty dict, anything but an exact dict, a key that is not 8 exact
 * bytes or an offset that is not an exact int: the Python steps then do it.
 */
static PyObject *
speedups_tail_entries(PyObject *module, PyObject *tail)
{
    if (!PyDict_CheckExact(tail) || PyDict_GET_SIZE(tail) == 0) {
        Py_RETURN_NONE;
    }
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(tail, &pos, &key, &value)) {
        if (!PyBytes_CheckExact(key) || PyBytes_GET_SIZE(key) != 8 || !PyLong_CheckExact(value)) {
            Py_RETURN_NONE;
        }
    }
    /* Int keys and values: hashing and comparing them runs no Python code, so
     * ``tail`` stays as it is while the loop runs. */
    PyObject *entries = _PyDict_NewPresized(PyDict_GET_SIZE(tail));
    if (entries == NULL) {
        return NULL;
    }
    uint64_t greatest = 0;
    pos = 0;
    while (PyDict_Next(tail, &pos, &key, &value)) {
        const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(key);
        uint64_t number = (uint64_t)get_u32(p) << 32 | get_u32(p + 4);
        if (number > greatest) {
            greatest = number;
        }
        PyObject *k = PyLong_FromUnsignedLongLong(number);
        int failed = k == NULL || PyDict_SetItem(entries, k, value) < 0;
        Py_XDECREF(k);
        if (failed) {
            Py_DECREF(entries);
            return NULL;
        }
    }
    PyObject *top = PyLong_FromUnsignedLongLong(greatest);
    if (top == NULL) {
        Py_DECREF(entries);
        return NULL;
    }
    return Py_BuildValue("(NN)", entries, top);
}

/* entry_bounds(entries) -> (min key, max key, min value, max value) | None
 *
 * DiskIndex.checkpoint's four bounds (``min(entries)``, ``max(entries)``,
 * ``min(entries.values())``, ``max(entries.values())``) in one pass.  None
 * for an empty dict, anything but an exact dict, or a key or value that is
 * not an exact int within a signed 64-bit one: the builtins then do it.
 */
static PyObject *
speedups_entry_bounds(PyObject *module, PyObject *entries)
{
    if (!PyDict_CheckExact(entries) || PyDict_GET_SIZE(entries) == 0) {
        Py_RETURN_NONE;
    }
    long long low_key = LLONG_MAX, high_key = LLONG_MIN, low = LLONG_MAX, high = LLONG_MIN;
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(entries, &pos, &key, &value)) {
        if (!PyLong_CheckExact(key) || !PyLong_CheckExact(value)) {
            Py_RETURN_NONE;
        }
        int overflow_key = 0, overflow_value = 0;
        long long k = PyLong_AsLongLongAndOverflow(key, &overflow_key);
        long long v = PyLong_AsLongLongAndOverflow(value, &overflow_value);
        if (overflow_key || overflow_value) {
            Py_RETURN_NONE;
        }
        if (k < low_key) low_key = k;
        if (k > high_key) high_key = k;
        if (v < low) low = v;
        if (v > high) high = v;
    }
    return Py_BuildValue("(LLLL)", low_key, high_key, low, high);
}

/* record_sizes(records) -> {oid: len(data)} | None
 *
 * Connection.commit's ``dict(zip(map(_oid_of, records), map(len,
 * map(_data_of, records))))`` for a list of exact 3-tuples whose oid and
 * data are exact bytes, in one presized dict; None for anything else (the
 * Python expression then decides).
 */
static PyObject *
speedups_record_sizes(PyObject *module, PyObject *records)
{
    if (!PyList_CheckExact(records)) {
        Py_RETURN_NONE;
    }
    Py_ssize_t count = PyList_GET_SIZE(records);
    if (!byte_triples(records, 2)) {
        Py_RETURN_NONE;
    }
    /* Bytes keys: hashing and comparing them runs no Python code. */
    PyObject *sizes = _PyDict_NewPresized(count);
    if (sizes == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *record = PyList_GET_ITEM(records, i);
        PyObject *size = PyLong_FromSsize_t(PyBytes_GET_SIZE(PyTuple_GET_ITEM(record, 1)));
        int failed = size == NULL || PyDict_SetItem(sizes, PyTuple_GET_ITEM(record, 0), size) < 0;
        Py_XDECREF(size);
        if (failed) {
            Py_DECREF(sizes);
            return NULL;
        }
    }
    return sizes;
}

/* encode_transaction(tid, time_us, records, version[, distinct]) -> bytes | None
 *
 * The bytes journal.encode_transaction returns, or None where it would
 * raise (it is then called to raise) or where a record is not a 3-tuple of
 * exact bytes (it is then called to encode).  ``distinct`` True: the caller
 * vouches that no oid appears twice (the records are the values of a dict
 * keyed by their oids), which is then not checked again.
 */
static PyObject *
speedups_encode_transaction(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 && nargs != 5) {
        PyErr_SetString(PyExc_TypeError, "encode_transaction(tid, time_us, records, version[, distinct])");
        return NULL;
    }
    int distinct = nargs == 5 && args[4] == Py_True;
    unsigned long long tid = PyLong_AsUnsignedLongLong(args[0]);
    if (tid == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    unsigned long long time_us = PyLong_AsUnsignedLongLong(args[1]);
    if (time_us == (unsigned long long)-1 && PyErr_Occurred()) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    long version = PyLong_AsLong(args[3]);
    if (version == -1 && PyErr_Occurred()) {
        return NULL;
    }
    PyObject *records = args[2];
    if (tid == 0 || !PyList_CheckExact(records)) {
        Py_RETURN_NONE;
    }
    Py_ssize_t count = PyList_GET_SIZE(records);
    if (count > 0xFFFFFFFFLL) {
        Py_RETURN_NONE;
    }
    Py_ssize_t header_size = version >= 2 ? 20 : 16;
    Py_ssize_t body_length = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *record = PyList_GET_ITEM(records, i);
        if (!PyTuple_Check(record) || PyTuple_GET_SIZE(record) != 3) {
            Py_RETURN_NONE;
        }
        PyObject *oid = PyTuple_GET_ITEM(record, 0);
        PyObject *data = PyTuple_GET_ITEM(record, 1);
        PyObject *refs = PyTuple_GET_ITEM(record, 2);
        if (!PyBytes_CheckExact(oid) || PyBytes_GET_SIZE(oid) != 8 || !PyBytes_CheckExact(data) ||
            !PyBytes_CheckExact(refs) || PyBytes_GET_SIZE(data) > 0xFFFFFFFFLL ||
            (PyBytes_GET_SIZE(refs) & 7) != 0 || PyBytes_GET_SIZE(refs) / 8 > 0xFFFFFFFFLL) {
            Py_RETURN_NONE;
        }
        body_length += header_size + PyBytes_GET_SIZE(data) + PyBytes_GET_SIZE(refs);
    }
    if (count > 1 && !distinct) {
        /* [FMT-013] An oid appears at most once per transaction. */
        PyObject *seen = PySet_New(NULL);
        if (seen == NULL) {
            return NULL;
        }
        for (Py_ssize_t i = 0; i < count; i++) {
            if (PySet_Add(seen, PyTuple_GET_ITEM(PyList_GET_ITEM(records, i), 0)) < 0) {
                Py_DECREF(seen);
                return NULL;
            }
        }
        Py_ssize_t unique = PySet_GET_SIZE(seen);
        Py_DECREF(seen);
        if (unique != count) {
            Py_RETURN_NONE;
        }
    }
    Py_ssize_t total = 40 + body_length + 16;
    PyObject *result = PyBytes_FromStringAndSize(NULL, total);
    if (result == NULL) {
        return NULL;
    }
    unsigned char *out = (unsigned char *)PyBytes_AS_STRING(result);
    /* Transaction header: tag, record_count, body_length, tid, time_us, reserved, crc. */
    memcpy(out, "DTXN", 4);
    put_u32(out + 4, (uint32_t)count);
    put_u64(out + 8, (uint64_t)body_length);
    put_u64(out + 16, tid);
    put_u64(out + 24, time_us);
    put_u32(out + 32, 0);
    put_u32(out + 36, crc_update(0, out, 36));
    unsigned char *p = out + 40;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *record = PyList_GET_ITEM(records, i);
        PyObject *data = PyTuple_GET_ITEM(record, 1);
        PyObject *refs = PyTuple_GET_ITEM(record, 2);
        Py_ssize_t data_length = PyBytes_GET_SIZE(data);
        Py_ssize_t refs_length = PyBytes_GET_SIZE(refs);
        unsigned char *head = p;
        memcpy(head, PyBytes_AS_STRING(PyTuple_GET_ITEM(record, 0)), 8);
        put_u32(head + 8, (uint32_t)data_length);
        put_u32(head + 12, (uint32_t)(refs_length >> 3));
        p += header_size;
        memcpy(p, PyBytes_AS_STRING(data), data_length);
        memcpy(p + data_length, PyBytes_AS_STRING(refs), refs_length);
        if (version >= 2) {
            /* [FMT-020] header bytes 0..15, the data, the references. */
            uint32_t crc = crc_update(crc_update(0, head, 16), p, data_length + refs_length);
            put_u32(head + 16, crc);
        }
        p += data_length + refs_length;
    }
    /* Trailer: tag, crc of header and body, total length. */
    memcpy(p, "DCMT", 4);
    put_u32(p + 4, crc_update(0, out, 40 + body_length));
    put_u64(p + 8, (uint64_t)total);
    return result;
}

/* --- plain pickles ------------------------------------------------------------ */

/* plain_loads: pickle.loads for the pickles of plain data, without an
 * Unpickler object.
 *
 * It reads the opcodes pickle protocols 2 to 5 write for None, bools, ints,
 * floats, strs, bytes, tuples, lists and dicts, with the memo (MEMOIZE,
 * BINGET, LONG_BINGET) and frames.  It returns 1 and the object in
 * ``*result``; or 0, no error set, for anything else: another opcode (a
 * global, a persistent id, a set, ...), a pickle that ends early or is
 * malformed, or any failure while building (an unhashable key, no memory).
 * Its caller then runs pickle.loads, whose answer or error is the
 * authoritative one.  Every object is built as pickle's C unpickler builds
 * it (PyDict_SetItem for SETITEM(S) into a dict, appends for APPEND(S) into a
 * list, "surrogatepass" UTF-8 for strs).
 */

typedef struct {
    PyObject **items;
    Py_ssize_t length, capacity;
} plain_stack;

/* The first PLAIN_INLINE entries of a stack live in the C function's own
 * frame (``own``); a deeper stack moves to the heap. */
#define PLAIN_INLINE 32

static int
plain_grow(plain_stack *stack, PyObject **own)
{
    Py_ssize_t capacity = stack->capacity * 2;
    PyObject **items;
    if (stack->items == own) {
        items = PyMem_Malloc((size_t)capacity * sizeof(PyObject *));
        if (items != NULL) {
            memcpy(items, own, (size_t)stack->length * sizeof(PyObject *));
        }
    }
    else {
        items = PyMem_Realloc(stack->items, (size_t)capacity * sizeof(PyObject *));
    }
    if (items == NULL) {
        return -1;
    }
    stack->items = items;
    stack->capacity = capacity;
    return 0;
}

static inline int
plain_push(plain_stack *stack, PyObject **own, PyObject *obj) /* steals ``obj`` */
{
    if (obj == NULL) {
        return -1;
    }
    if (stack->length == stack->capacity && plain_grow(stack, own) < 0) {
        Py_DECREF(obj);
        return -1;
    }
    stack->items[stack->length++] = obj;
    return 0;
}

static void
plain_clear(plain_stack *stack, PyObject **own)
{
    for (Py_ssize_t i = 0; i < stack->length; i++) {
        Py_DECREF(stack->items[i]);
    }
    if (stack->items != own) {
        PyMem_Free(stack->items);
    }
}

static inline uint64_t
get_le(const unsigned char *p, int size)
{
    uint64_t value = 0;
    for (int i = size - 1; i >= 0; i--) {
        value = value << 8 | p[i];
    }
    return value;
}

/* The attribute names of loaded states: the interned str keys copy_state put
 * into an instance's __dict__, a few of them, each in the slot of its ASCII
 * bytes.  plain_loads takes a str it meets from here when the bytes match,
 * instead of decoding a new one that copy_state would then look up in the
 * interned table: the same value (a str is immutable), and no string is
 * interned that would not have been. */
#define KEY_CACHE_SLOTS 64
#define KEY_CACHE_LONGEST 32
static PyObject *key_cache[KEY_CACHE_SLOTS];

static inline unsigned int
key_cache_slot(const unsigned char *text, Py_ssize_t length)
{
    unsigned int h = (unsigned int)length;
    if (length > 0) {
        h = h * 31u + text[0];
        h = h * 31u + text[length - 1];
        h = h * 31u + text[length / 2];
    }
    return h & (KEY_CACHE_SLOTS - 1);
}

/* The cached str whose ASCII characters are ``text``, a new reference; NULL if none. */
static inline PyObject *
key_cache_find(const unsigned char *text, Py_ssize_t length)
{
    if (length > KEY_CACHE_LONGEST) {
        return NULL;
    }
    PyObject *key = key_cache[key_cache_slot(text, length)];
    if (key != NULL && PyUnicode_GET_LENGTH(key) == length &&
        memcmp(PyUnicode_1BYTE_DATA(key), text, (size_t)length) == 0) {
        return Py_NewRef(key);
    }
    return NULL;
}

/* Remember the interned exact str ``key`` (ASCII, short), replacing its slot's. */
static inline void
key_cache_store(PyObject *key)
{
    if (PyUnicode_CheckExact(key) && PyUnicode_CHECK_INTERNED(key) && PyUnicode_IS_ASCII(key) &&
        PyUnicode_GET_LENGTH(key) <= KEY_CACHE_LONGEST) {
        Py_ssize_t length = PyUnicode_GET_LENGTH(key);
        PyObject **slot = &key_cache[key_cache_slot(PyUnicode_1BYTE_DATA(key), length)];
        if (*slot != key) {
            Py_XSETREF(*slot, Py_NewRef(key));
        }
    }
}

static int
plain_loads_into(const unsigned char *p, Py_ssize_t n, PyObject *target, PyObject **result)
{
    PyObject *stack_own[PLAIN_INLINE], *memo_own[PLAIN_INLINE];
    plain_stack stack = {stack_own, 0, PLAIN_INLINE};
    plain_stack memo = {memo_own, 0, PLAIN_INLINE};
    Py_ssize_t marks[PLAIN_INLINE];
    int mark_count = 0;
    int handled = 0;
    Py_ssize_t pos = 0;
#define NEED(k)                                                                                   \
    do {                                                                                          \
        if (n - pos < (Py_ssize_t)(k)) {                                                          \
            goto done;                                                                            \
        }                                                                                         \
    } while (0)
#define PUSH(obj)                                                                                 \
    do {                                                                                          \
        if (plain_push(&stack, stack_own, (obj)) < 0) {                                                      \
            goto done;                                                                            \
        }                                                                                         \
    } while (0)
    while (pos < n) {
        unsigned char op = p[pos++];
        Py_ssize_t length;
        switch (op) {
        case 0x80: /* PROTO */
            NEED(1);
            if (p[pos] < 2 || p[pos] > 5) {
                goto done;
            }
            pos += 1;
            break;
        case 0x95: /* FRAME */
            NEED(8);
            if (get_le(p + pos, 8) > (uint64_t)(n - pos - 8)) {
                goto done;
            }
            pos += 8;
            break;
        case '.': /* STOP */
            if (stack.length != 1 || mark_count != 0 ||
                (target != NULL && stack.items[0] != target)) {
                goto done;
            }
            *result = stack.items[0];
            stack.length = 0;
            handled = 1;
            goto done;
        case 'N':
            PUSH(Py_NewRef(Py_None));
            break;
        case 0x88: /* NEWTRUE */
            PUSH(Py_NewRef(Py_True));
            break;
        case 0x89: /* NEWFALSE */
            PUSH(Py_NewRef(Py_False));
            break;
        case 'K': /* BININT1 */
            NEED(1);
            PUSH(PyLong_FromLong(p[pos]));
            pos += 1;
            break;
        case 'M': /* BININT2 */
            NEED(2);
            PUSH(PyLong_FromLong((long)get_le(p + pos, 2)));
            pos += 2;
            break;
        case 'J': /* BININT */
            NEED(4);
            PUSH(PyLong_FromLong((long)(int32_t)(uint32_t)get_le(p + pos, 4)));
            pos += 4;
            break;
        case 0x8a: /* LONG1 */
            NEED(1);
            length = p[pos];
            pos += 1;
            NEED(length);
            PUSH(length == 0 ? PyLong_FromLong(0)
                             : _PyLong_FromByteArray(p + pos, (size_t)length, 1, 1));
            pos += length;
            break;
        case 'G': /* BINFLOAT */
        {
            NEED(8);
            double value = PyFloat_Unpack8((const char *)p + pos, 0);
            if (value == -1.0 && PyErr_Occurred()) {
                goto done;
            }
            PUSH(PyFloat_FromDouble(value));
            pos += 8;
            break;
        }
        case 0x8c: /* SHORT_BINUNICODE */
        case 'X':  /* BINUNICODE */
        case 0x8d: /* BINUNICODE8 */
        case 'C':  /* SHORT_BINBYTES */
        case 'B':  /* BINBYTES */
        case 0x8e: /* BINBYTES8 */
        {
            int size = (op == 0x8c || op == 'C') ? 1 : (op == 'X' || op == 'B') ? 4 : 8;
            NEED(size);
            uint64_t declared = get_le(p + pos, size);
            pos += size;
            if (declared > (uint64_t)(n - pos)) {
                goto done;
            }
            length = (Py_ssize_t)declared;
            if (op == 0x8c || op == 'X' || op == 0x8d) {
                PyObject *known = key_cache_find(p + pos, length);
                PUSH(known != NULL ? known
                                   : PyUnicode_DecodeUTF8((const char *)p + pos, length,
                                                          "surrogatepass"));
            }
            else {
                PUSH(PyBytes_FromStringAndSize((const char *)p + pos, length));
            }
            pos += length;
            break;
        }
        case '}': /* EMPTY_DICT */
            if (target != NULL && stack.length == 0 && mark_count == 0 && memo.length == 0) {
                /* The state's own dict is ``target``: the first object of the pickle. */
                PUSH(Py_NewRef(target));
                break;
            }
            PUSH(PyDict_New());
            break;
        case ']': /* EMPTY_LIST */
            PUSH(PyList_New(0));
            break;
        case ')': /* EMPTY_TUPLE */
            PUSH(PyTuple_New(0));
            break;
        case '(': /* MARK */
            if (mark_count == PLAIN_INLINE) {
                goto done;
            }
            marks[mark_count++] = stack.length;
            break;
        case 0x85: /* TUPLE1 */
        case 0x86: /* TUPLE2 */
        case 0x87: /* TUPLE3 */
        case 't':  /* TUPLE */
        {
            Py_ssize_t start;
            if (op == 't') {
                if (mark_count == 0) {
                    goto done;
                }
                start = marks[--mark_count];
            }
            else {
                start = stack.length - (op - 0x84);
            }
            if (start < 0 || (mark_count > 0 && start < marks[mark_count - 1])) {
                goto done;
            }
            PyObject *tuple = PyTuple_New(stack.length - start);
            if (tuple == NULL) {
                goto done;
            }
            for (Py_ssize_t i = start; i < stack.length; i++) {
                PyTuple_SET_ITEM(tuple, i - start, stack.items[i]);
            }
            stack.length = start;
            PUSH(tuple);
            break;
        }
        case 'a': /* APPEND */
        case 'e': /* APPENDS */
        {
            Py_ssize_t start;
            if (op == 'e') {
                if (mark_count == 0) {
                    goto done;
                }
                start = marks[--mark_count];
            }
            else {
                start = stack.length - 1;
            }
            if (start < 1 || (mark_count > 0 && start - 1 < marks[mark_count - 1])) {
                goto done;
            }
            PyObject *list = stack.items[start - 1];
            if (!PyList_CheckExact(list)) {
                goto done;
            }
            for (Py_ssize_t i = start; i < stack.length; i++) {
                if (PyList_Append(list, stack.items[i]) < 0) {
                    goto done;
                }
            }
            for (Py_ssize_t i = start; i < stack.length; i++) {
                Py_DECREF(stack.items[i]);
            }
            stack.length = start;
            break;
        }
        case 's': /* SETITEM */
        case 'u': /* SETITEMS */
        {
            Py_ssize_t start;
            if (op == 'u') {
                if (mark_count == 0) {
                    goto done;
                }
                start = marks[--mark_count];
            }
            else {
                start = stack.length - 2;
            }
            if (start < 1 || (stack.length - start) % 2 != 0 ||
                (mark_count > 0 && start - 1 < marks[mark_count - 1])) {
                goto done;
            }
            PyObject *dict = stack.items[start - 1];
            if (!PyDict_CheckExact(dict)) {
                goto done;
            }
            for (Py_ssize_t i = start; i < stack.length; i += 2) {
                if (dict == target && PyUnicode_CheckExact(stack.items[i])) {
                    /* An attribute name, interned as copy_state interns it. */
                    PyUnicode_InternInPlace(&stack.items[i]);
                    key_cache_store(stack.items[i]);
                }
                if (PyDict_SetItem(dict, stack.items[i], stack.items[i + 1]) < 0) {
                    goto done;
                }
            }
            for (Py_ssize_t i = start; i < stack.length; i++) {
                Py_DECREF(stack.items[i]);
            }
            stack.length = start;
            break;
        }
        case 0x94: /* MEMOIZE */
            if (stack.length == 0 || (mark_count > 0 && stack.length == marks[mark_count - 1])) {
                goto done;
            }
            if (plain_push(&memo, memo_own, Py_NewRef(stack.items[stack.length - 1])) < 0) {
                goto done;
            }
            break;
        case 'h': /* BINGET */
        case 'j': /* LONG_BINGET */
        {
            int size = op == 'h' ? 1 : 4;
            NEED(size);
            uint64_t index = get_le(p + pos, size);
            pos += size;
            if (index >= (uint64_t)memo.length ||
                (target != NULL && memo.items[index] == target)) {
                /* (A state that holds itself: its own dict, not the object's.) */
                goto done;
            }
            PUSH(Py_NewRef(memo.items[index]));
            break;
        }
        default:
            goto done;
        }
    }
done:
#undef NEED
#undef PUSH
    plain_clear(&stack, stack_own);
    plain_clear(&memo, memo_own);
    if (!handled) {
        PyErr_Clear(); /* whatever went wrong, pickle.loads decides it */
    }
    return handled;
}

/* plain_loads_into without a target: the pickle's object in ``*result``. */
static int
plain_loads(const unsigned char *p, Py_ssize_t n, PyObject **result)
{
    return plain_loads_into(p, n, NULL, result);
}

/* plain_loads(data) -> (True, object) | (False, None): the function above, for the tests. */
static PyObject *
speedups_plain_loads(PyObject *module, PyObject *arg)
{
    if (!PyBytes_Check(arg)) {
        PyErr_SetString(PyExc_TypeError, "plain_loads() takes bytes");
        return NULL;
    }
    PyObject *result = NULL;
    if (plain_loads((const unsigned char *)PyBytes_AS_STRING(arg), PyBytes_GET_SIZE(arg),
                    &result)) {
        return Py_BuildValue("(ON)", Py_True, result);
    }
    return Py_BuildValue("(OO)", Py_False, Py_None);
}

/* read_pickle_state(class_pickles, fallback, data, refs) -> state
 *
 * PickleDecoder.read_state's fast case for an unrestricted reader: a record
 * that references nothing (``refs`` is b"") and whose class pickle is known
 * memo-free (``class_pickles[class_pickle] is True``) has its state pickle
 * read by pickle.loads alone.  Everything else, and a pickle.loads failure
 * of the kinds read_state lets through to its fallback, is
 * ``fallback(data, refs)``.
 */
/* The class pickles dict of read_pickle_state's last fast read, and a class pickle
 * it holds as memo-free (True); both owned, or both NULL. */
static PyObject *known_pickles = NULL, *known_pickle = NULL;

/* read_pickle_state's fast read of ``data``: the state, or NULL -- with an
 * error set, that error; with none, the record is the fallback's.  Given
 * ``target``, an empty exact dict, a dict state is decoded straight into it
 * (its str keys interned) and ``target`` itself returned; a try that fails
 * leaves it empty, and the state is then read as without it. */
static PyObject *
pickle_state_fast(PyObject *class_pickles, PyObject *data, PyObject *refs, PyObject *target)
{
    if (!(PyDict_CheckExact(class_pickles) && PyBytes_CheckExact(data) && PyBytes_CheckExact(refs) &&
          PyBytes_GET_SIZE(refs) == 0 && PyBytes_GET_SIZE(data) >= 12)) {
        return NULL;
    }
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(data);
    Py_ssize_t length = PyBytes_GET_SIZE(data);
    if (!(p[1] == 0x80 && p[2] == 0x05 && p[3] == 0x95)) {
        return NULL;
    }
    /* PROTO 5, FRAME and pickle's little-endian frame length. */
    uint64_t frame = 0;
    for (int i = 7; i >= 0; i--) {
        frame = frame << 8 | p[4 + i];
    }
    if (frame > (uint64_t)(length - 12)) {
        return NULL;
    }
    Py_ssize_t end = 12 + (Py_ssize_t)frame;
    PyObject *memo_free;
    if (known_pickles == class_pickles && PyBytes_GET_SIZE(known_pickle) == end - 1 &&
        memcmp(PyBytes_AS_STRING(known_pickle), p + 1, (size_t)(end - 1)) == 0) {
        memo_free = Py_True; /* the class pickle of the last record read here */
    }
    else {
        PyObject *class_pickle = PyBytes_FromStringAndSize((const char *)p + 1, end - 1);
        if (class_pickle == NULL) {
            return NULL;
        }
        memo_free = PyDict_GetItemWithError(class_pickles, class_pickle);
        if (memo_free == NULL && PyErr_Occurred()) {
            Py_DECREF(class_pickle);
            return NULL;
        }
        if (memo_free == Py_True) {
            /* Remembered with its dict (held, so that its address is not
             * another dict's later): a True verdict is never taken back. */
            Py_INCREF(class_pickles);
            Py_XSETREF(known_pickles, class_pickles);
            Py_XSETREF(known_pickle, class_pickle);
        }
        else {
            Py_DECREF(class_pickle);
        }
    }
    if (memo_free != Py_True) {
        return NULL;
    }
    PyObject *state;
    if (target != NULL) {
        if (plain_loads_into(p + end, length - end, target, &state)) {
            return state; /* target itself */
        }
        PyDict_Clear(target);
    }
    if (plain_loads(p + end, length - end, &state)) {
        return state;
    }
    PyObject *state_pickle = PyBytes_FromStringAndSize((const char *)p + end, length - end);
    if (state_pickle == NULL) {
        return NULL;
    }
    state = PyObject_CallOneArg(pickle_loads, state_pickle);
    Py_DECREF(state_pickle);
    if (state == NULL && PyErr_ExceptionMatches(loads_errors)) {
        PyErr_Clear(); /* the fallback raises the error it would have raised */
    }
    return state;
}

static PyObject *
speedups_read_pickle_state(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || pickle_loads == NULL) {
        PyErr_SetString(PyExc_TypeError,
                        "read_pickle_state(class_pickles, fallback, data, refs), once configured");
        return NULL;
    }
    PyObject *state = pickle_state_fast(args[0], args[2], args[3], NULL);
    if (state != NULL || PyErr_Occurred()) {
        return state;
    }
    PyObject *fallback_args[2] = {args[2], args[3]};
    return PyObject_Vectorcall(args[1], fallback_args, 2, NULL);
}

/* state_reader(class_pickles, fallback) -> a callable ``reader(data, refs)``
 *
 * read_pickle_state(class_pickles, fallback, data, refs), with the first two
 * bound (as functools.partial binds them); the ghost hook's load also knows
 * it, and decodes a dict state through it straight into the object's
 * __dict__ (read_into_dict).  Its two fields never change. */
typedef struct {
    PyObject_HEAD
    PyObject *class_pickles;
    PyObject *fallback;
    vectorcallfunc vectorcall;
} StateReader;

static PyObject *
state_reader_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    if (nargs != 2 || (kwnames != NULL && PyTuple_GET_SIZE(kwnames) > 0)) {
        PyErr_SetString(PyExc_TypeError, "a state reader takes (data, refs)");
        return NULL;
    }
    StateReader *reader = (StateReader *)self;
    PyObject *state = pickle_state_fast(reader->class_pickles, args[0], args[1], NULL);
    if (state != NULL || PyErr_Occurred()) {
        return state;
    }
    return PyObject_Vectorcall(reader->fallback, args, 2, NULL);
}

static int
state_reader_traverse(StateReader *self, visitproc visit, void *arg)
{
    Py_VISIT(self->class_pickles);
    Py_VISIT(self->fallback);
    return 0;
}

static int
state_reader_clear(StateReader *self)
{
    Py_CLEAR(self->class_pickles);
    Py_CLEAR(self->fallback);
    return 0;
}

static void
state_reader_dealloc(StateReader *self)
{
    PyObject_GC_UnTrack(self);
    state_reader_clear(self);
    PyObject_GC_Del(self);
}

static PyTypeObject StateReaderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "dhruva._speedups.StateReader",
    .tp_basicsize = sizeof(StateReader),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .tp_doc = "read_pickle_state with class_pickles and fallback bound: reader(data, refs).",
    .tp_traverse = (traverseproc)state_reader_traverse,
    .tp_clear = (inquiry)state_reader_clear,
    .tp_dealloc = (destructor)state_reader_dealloc,
    .tp_call = PyVectorcall_Call,
    .tp_vectorcall_offset = offsetof(StateReader, vectorcall),
};

static PyObject *
speedups_state_reader(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || pickle_loads == NULL) {
        PyErr_SetString(PyExc_TypeError, "state_reader(class_pickles, fallback), once configured");
        return NULL;
    }
    StateReader *reader = PyObject_GC_New(StateReader, &StateReaderType);
    if (reader == NULL) {
        return NULL;
    }
    reader->class_pickles = Py_NewRef(args[0]);
    reader->fallback = Py_NewRef(args[1]);
    reader->vectorcall = state_reader_vectorcall;
    PyObject_GC_Track(reader);
    return (PyObject *)reader;
}

/* --- states ---------------------------------------------------------------- */

/* Clear ``d``, then copy every item of the dict ``state`` into it, exact-str
 * keys interned (CPython's fast attribute lookup needs interned keys). */
static int
copy_state(PyObject *d, PyObject *state)
{
    PyDict_Clear(d);
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(state, &pos, &key, &value)) {
        Py_INCREF(key);
        if (PyUnicode_CheckExact(key)) {
            PyUnicode_InternInPlace(&key);
            key_cache_store(key);
        }
        int failed = PyDict_SetItem(d, key, value);
        Py_DECREF(key);
        if (failed < 0) {
            return -1;
        }
    }
    return 0;
}

/* set_dict_state(d, state) -> None
 *
 * Persistent.__setstate__ for an exact dict ``state``: ``d`` cleared, then
 * every item of ``state`` copied into it with exact-str keys interned.
 * Returns NotImplemented, without touching ``d``, for anything else.
 */
static PyObject *
speedups_set_dict_state(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "set_dict_state(d, state)");
        return NULL;
    }
    PyObject *d = args[0];
    PyObject *state = args[1];
    if (!PyDict_CheckExact(d) || !PyDict_CheckExact(state) || d == state) {
        Py_RETURN_NOTIMPLEMENTED;
    }
    if (copy_state(d, state) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

/* --- persistent objects ------------------------------------------------------ */

/* Set by configure_persistent(): the classes, the byte offsets of the _p_
 * slots in every instance of a PersistentBase subclass (CPython keeps a
 * slot's offset in its member descriptor), and the Python originals the
 * C versions below defer to in unusual cases. */
static PyTypeObject *persistent_base = NULL;
static PyObject *dict_state_setstate = NULL; /* Persistent.__setstate__, the Python function */
static PyObject *python_setattr = NULL;      /* PersistentBase.__setattr__, the Python function */
static PyObject *python_ghost_getattribute = NULL;   /* persistent._ghost_getattribute */
static PyObject *python_tracked_getattribute = NULL; /* persistent._tracked_getattribute */
static PyObject *str_load_state = NULL;
static PyObject *str_note_read = NULL;
static PyObject *value_unsaved = NULL;
static PyObject *value_saved = NULL;
static PyObject *str_p_note_change = NULL;
static PyObject *str_note_change = NULL;
static PyObject *str_setstate = NULL;
static PyObject *str_getstate_name = NULL;
static PyObject *str_class = NULL;
static PyObject *str_p_class = NULL;
static PyObject *str_p_tracked_class = NULL;
static PyObject *str_p_set_status_ghost = NULL;
static PyObject *value_zero = NULL;
/* The ObjectWriter attributes reference() reads. */
static PyObject *str_connection = NULL, *str_new_oid = NULL, *str_attached = NULL,
                *str_queue = NULL, *str_refs = NULL, *str_reference = NULL;
static PyObject *str_module_name = NULL; /* "__module__" (plain_dump's classes) */
static PyObject *pd_extension_registry = NULL; /* copyreg._extension_registry */
static Py_ssize_t off_status = -1, off_serial = -1, off_size = -1, off_oid = -1,
                  off_connection = -1;

static Py_ssize_t
slot_offset(PyTypeObject *type, const char *name)
{
    PyObject *descr = PyDict_GetItemString(type->tp_dict, name); /* borrowed */
    if (descr == NULL || !PyObject_TypeCheck(descr, &PyMemberDescr_Type)) {
        PyErr_Format(PyExc_TypeError, "%s has no slot %s", type->tp_name, name);
        return -1;
    }
    PyMemberDef *member = ((PyMemberDescrObject *)descr)->d_member;
    if (member->type != T_OBJECT_EX) {
        PyErr_Format(PyExc_TypeError, "%s.%s is not an object slot", type->tp_name, name);
        return -1;
    }
    return member->offset;
}

#define SLOT(obj, offset) (*(PyObject **)((char *)(obj) + (offset)))

/* Store ``value`` (a new reference taken here) in a slot. */
static inline void
slot_set(PyObject *obj, Py_ssize_t offset, PyObject *value)
{
    Py_INCREF(value);
    Py_XSETREF(SLOT(obj, offset), value);
}

static PyObject *
speedups_configure_persistent(PyObject *module, PyObject *args)
{
    PyObject *base, *dict_class, *setstate, *setattr_function, *unsaved, *saved, *ghost, *tracked;
    if (!PyArg_ParseTuple(args, "O!O!OOOOOO:configure_persistent", &PyType_Type, &base,
                          &PyType_Type, &dict_class, &setstate, &setattr_function, &unsaved,
                          &saved, &ghost, &tracked)) {
        return NULL;
    }
    PyTypeObject *type = (PyTypeObject *)base;
    Py_ssize_t status = slot_offset(type, "_p_status");
    Py_ssize_t serial = status < 0 ? -1 : slot_offset(type, "_p_serial");
    Py_ssize_t size = serial < 0 ? -1 : slot_offset(type, "_p_size");
    Py_ssize_t oid = size < 0 ? -1 : slot_offset(type, "_p_oid");
    Py_ssize_t connection = oid < 0 ? -1 : slot_offset(type, "_p_connection");
    if (connection < 0) {
        return NULL;
    }
    if (value_zero == NULL) { /* set last: a failure part way is tried again */
        struct {
            PyObject **name;
            const char *text;
        } names[] = {
            {&str_p_note_change, "_p_note_change"},
            {&str_note_change, "note_change"},
            {&str_setstate, "__setstate__"},
            {&str_getstate_name, "__getstate__"},
            {&str_class, "__class__"},
            {&str_p_class, "_p_class"},
            {&str_load_state, "load_state"},
            {&str_note_read, "note_read"},
            {&str_p_tracked_class, "_p_tracked_class"},
            {&str_p_set_status_ghost, "_p_set_status_ghost"},
            {&str_connection, "connection"},
            {&str_new_oid, "_new_oid"},
            {&str_attached, "attached"},
            {&str_queue, "queue"},
            {&str_refs, "_refs"},
            {&str_reference, "reference"},
            {&str_module_name, "__module__"},
        };
        for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
            if ((*names[i].name = PyUnicode_InternFromString(names[i].text)) == NULL) {
                return NULL;
            }
        }
        if ((value_zero = PyLong_FromLong(0)) == NULL) {
            return NULL;
        }
    }
    if (pd_extension_registry == NULL) {
        /* pickle's registry of extension codes (copyreg.add_extension). */
        PyObject *copyreg = PyImport_ImportModule("copyreg");
        if (copyreg == NULL) {
            return NULL;
        }
        pd_extension_registry = PyObject_GetAttrString(copyreg, "_extension_registry");
        Py_DECREF(copyreg);
        if (pd_extension_registry == NULL) {
            return NULL;
        }
    }
    off_status = status;
    off_serial = serial;
    off_size = size;
    off_oid = oid;
    off_connection = connection;
    Py_INCREF(base);
    Py_XSETREF(persistent_base, type);
    Py_INCREF(setstate);
    Py_XSETREF(dict_state_setstate, setstate);
    Py_INCREF(setattr_function);
    Py_XSETREF(python_setattr, setattr_function);
    Py_INCREF(ghost);
    Py_XSETREF(python_ghost_getattribute, ghost);
    Py_INCREF(tracked);
    Py_XSETREF(python_tracked_getattribute, tracked);
    Py_INCREF(unsaved);
    Py_XSETREF(value_unsaved, unsaved);
    Py_INCREF(saved);
    Py_XSETREF(value_saved, saved);
    (void)dict_class;
    Py_RETURN_NONE;
}

/* persistent_new(cls, *args, **kwargs): PersistentBase.__new__. */
static PyObject *
speedups_persistent_new(PyObject *module, PyObject *const *args, Py_ssize_t nargs,
                        PyObject *kwnames)
{
    if (nargs < 1 || !PyType_Check(args[0]) || persistent_base == NULL ||
        !PyType_IsSubtype((PyTypeObject *)args[0], persistent_base)) {
        PyErr_SetString(PyExc_TypeError, "persistent_new(cls, ...): cls is a persistent class");
        return NULL;
    }
    PyTypeObject *cls = (PyTypeObject *)args[0];
    PyObject *empty = PyTuple_New(0);
    if (empty == NULL) {
        return NULL;
    }
    /* object.__new__(cls): its checks (an abstract class is refused) and allocation. */
    PyObject *self = PyBaseObject_Type.tp_new(cls, empty, NULL);
    Py_DECREF(empty);
    if (self == NULL) {
        return NULL;
    }
    static PyObject *zero = NULL;
    if (zero == NULL && (zero = PyLong_FromLong(0)) == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    slot_set(self, off_status, value_unsaved);
    slot_set(self, off_serial, zero);
    slot_set(self, off_size, zero);
    slot_set(self, off_oid, Py_None);
    slot_set(self, off_connection, Py_None);
    return self;
}

/* Whether ``name`` (an exact str) starts with "_p_". */
static inline int
is_p_name(PyObject *name)
{
    return PyUnicode_GET_LENGTH(name) >= 3 && PyUnicode_READ_CHAR(name, 0) == '_' &&
           PyUnicode_READ_CHAR(name, 1) == 'p' && PyUnicode_READ_CHAR(name, 2) == '_';
}

/* self._p_note_change(), for a change to ``self`` whose status is ``status``.
 *
 * The common case inline: PersistentBase's own _p_note_change (not a
 * subclass's), a saved object in its real class (not a ghost, not tracked),
 * and a metaclass that is ``type``; then, as the Python method does, the
 * status becomes UNSAVED and ``connection.note_change(self)`` is called.
 * Everything else calls the method. */
static int
note_change_inline(PyObject *self, PyObject *status)
{
    PyTypeObject *type = Py_TYPE(self);
    PyObject *result;
    if (status == value_saved && Py_IS_TYPE(type, &PyType_Type)
        && _PyType_Lookup(type, str_p_note_change)
               == _PyType_Lookup(persistent_base, str_p_note_change)
        && _PyType_Lookup(type, str_p_class) == (PyObject *)type) {
        Py_INCREF(value_unsaved);
        Py_XSETREF(SLOT(self, off_status), value_unsaved);
        PyObject *connection = SLOT(self, off_connection);
        if (connection == NULL || connection == Py_None) {
            return 0;
        }
        Py_INCREF(connection); /* note_change may drop the object's own reference */
        result = PyObject_CallMethodOneArg(connection, str_note_change, self);
        Py_DECREF(connection);
    }
    else {
        result = PyObject_CallMethodNoArgs(self, str_p_note_change);
    }
    if (result == NULL) {
        return -1;
    }
    Py_DECREF(result);
    return 0;
}

/* PersistentBase.__setattr__(self, name, value), as a method descriptor. */
static PyObject *
persistent_setattr(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyUnicode_CheckExact(args[0]) || !PyObject_TypeCheck(self, persistent_base)) {
        /* A name that is not an exact str, or an object that is not persistent
         * (PersistentBase.__setattr__(other, ...)): the Python original says
         * what happens. */
        PyObject *stack[3] = {self, nargs > 0 ? args[0] : NULL, nargs > 1 ? args[1] : NULL};
        return PyObject_Vectorcall(python_setattr, stack, nargs + 1, NULL);
    }
    PyObject *name = args[0];
    if (!is_p_name(name)) {
        PyObject *status = SLOT(self, off_status);
        int changed;
        if (status == NULL) {
            /* No status yet: reading it raises AttributeError, as in Python. */
            PyObject *read = PyObject_GetAttrString(self, "_p_status");
            if (read == NULL) {
                return NULL;
            }
            changed = PyObject_RichCompareBool(read, value_unsaved, Py_NE);
            Py_DECREF(read);
        }
        else if (status == value_unsaved) {
            changed = 0;
        }
        else {
            changed = PyObject_RichCompareBool(status, value_unsaved, Py_NE);
        }
        if (changed < 0) {
            return NULL;
        }
        if (changed) {
            if (note_change_inline(self, status) < 0) {
                return NULL;
            }
        }
    }
    if (PyObject_GenericSetAttr(self, name, args[1]) < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef persistent_setattr_def = {
    "__setattr__", (PyCFunction)(void (*)(void))persistent_setattr, METH_FASTCALL,
    "Set an attribute; a change to a saved or ghost object is noted first (_p_note_change).",
};

/* setattr_descriptor(PersistentBase): PersistentBase.__setattr__ in C, a method descriptor. */
static PyObject *
speedups_setattr_descriptor(PyObject *module, PyObject *arg)
{
    if (persistent_base == NULL || arg != (PyObject *)persistent_base) {
        PyErr_SetString(PyExc_TypeError, "setattr_descriptor() takes the configured PersistentBase");
        return NULL;
    }
    /* A descriptor of object's, so that its type check lets every object
     * through to persistent_setattr, which hands the ones that are not
     * persistent to the Python original (as the Python method would take them). */
    return PyDescr_NewMethod(&PyBaseObject_Type, &persistent_setattr_def);
}

/* persistent_id(base, reference, obj) -> reference(obj) | None
 *
 * The persistent_id of a record pickler (serialize.persistent_id_function):
 * ``reference(obj)`` for an instance of ``base`` (isinstance, as in Python),
 * None for anything else, without a Python call for the ints and strs of a
 * state.
 */
static PyObject *
speedups_persistent_id(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3) {
        PyErr_SetString(PyExc_TypeError, "persistent_id(base, reference, obj)");
        return NULL;
    }
    PyObject *obj = args[2];
    PyTypeObject *type = Py_TYPE(obj);
    /* The values of a state: exact builtins, whose __class__ no one can
     * change, are no persistent object (isinstance would look __class__ up). */
    if (obj == Py_None || type == &PyLong_Type || type == &PyUnicode_Type ||
        type == &PyFloat_Type || type == &PyBytes_Type || type == &PyBool_Type ||
        type == &PyTuple_Type || type == &PyList_Type || type == &PyDict_Type) {
        Py_RETURN_NONE;
    }
    int is_persistent = PyObject_IsInstance(obj, args[0]);
    if (is_persistent < 0) {
        return NULL;
    }
    if (!is_persistent) {
        Py_RETURN_NONE;
    }
    return PyObject_CallOneArg(args[1], obj);
}

/* Append ``obj`` to the list (or sequence with append) ``writer.<name>``; -1 on an error. */
static int
append_to(PyObject *writer, PyObject *name, PyObject *obj)
{
    PyObject *target = PyObject_GetAttr(writer, name);
    if (target == NULL) {
        return -1;
    }
    int failed;
    if (PyList_CheckExact(target)) {
        failed = PyList_Append(target, obj);
    } else {
        PyObject *done = PyObject_CallMethod(target, "append", "O", obj);
        failed = done == NULL ? -1 : 0;
        Py_XDECREF(done);
    }
    Py_DECREF(target);
    return failed;
}

/* Whether ``value`` is plain data: exact None, bool, int, float, str, bytes,
 * and lists, tuples and dicts of them, at most ``depth`` levels deep; each
 * container entry takes one of ``*budget``.  Pickle writes such values by
 * their types alone (before it consults copyreg or any reducer), so a
 * plain value holds no persistent object and pickles the same everywhere. */
static int
is_plain(PyObject *value, int depth, Py_ssize_t *budget)
{
    PyTypeObject *type = Py_TYPE(value);
    if (value == Py_None || type == &PyBool_Type || type == &PyLong_Type ||
        type == &PyFloat_Type || type == &PyUnicode_Type || type == &PyBytes_Type) {
        return 1;
    }
    if (depth <= 0) {
        return 0;
    }
    if (type == &PyList_Type || type == &PyTuple_Type) {
        Py_ssize_t n = Py_SIZE(value);
        if ((*budget -= n) < 0) {
            return 0;
        }
        PyObject **items = type == &PyList_Type ? ((PyListObject *)value)->ob_item
                                                : ((PyTupleObject *)value)->ob_item;
        for (Py_ssize_t i = 0; i < n; i++) {
            /* A list cannot change here: nothing but type checks runs. */
            if (!is_plain(items[i], depth - 1, budget)) {
                return 0;
            }
        }
        return 1;
    }
    if (type == &PyDict_Type) {
        if ((*budget -= PyDict_GET_SIZE(value)) < 0) {
            return 0;
        }
        Py_ssize_t pos = 0;
        PyObject *key, *item;
        while (PyDict_Next(value, &pos, &key, &item)) {
            if (!is_plain(key, depth - 1, budget) || !is_plain(item, depth - 1, budget)) {
                return 0;
            }
        }
        return 1;
    }
    return 0;
}

/* --- plain_dump: pickle.dumps(value, 5) of plain data, byte for byte ----------
 *
 * The opcodes _pickle.c writes for exact None, bools, ints, floats, strs,
 * bytes, lists, tuples and dicts at protocol 5: PROTO, one FRAME, the
 * memo (MEMOIZE after each str, bytes, list, dict and non-empty tuple;
 * BINGET for one met again), APPEND(S) and SETITEM(S) in batches of 1000,
 * and STOP.  A value it does not write exactly as pickle would -- an int
 * beyond 32 bits, a str that is not ASCII, more than PD_MEMO_MAX memoized
 * objects, a pickle of more than PD_MAX_BYTES (pickle frames large ones
 * differently) -- is handed back, and the caller calls pickle.dumps.
 *
 * Given an ObjectWriter (``pd_writer``, from encode_records), it also writes
 * the persistent objects inside a state as the writer's pickler does: the
 * persistent id ``reference(writer, obj)`` returns, ``(oid, class)``, saved
 * as a tuple (the oid bytes memoized, the class as a global the first time,
 * then from the memo; the tuple memoized too), then BINPERSID.  reference()
 * may run Python code (a storage's new_oid), so from the first reference on
 * every memoized object is held (``pd_keep``) and every container item is
 * held while it is written: nothing the memo names can be freed and its
 * address reused.  The buffer and memo are static; a plain_dump entered
 * while one is running (from that Python code) hands back at once. */

#define PD_MAX_BYTES (32 * 1024)
#define PD_MEMO_MAX 4096
#define PD_MEMO_SLOTS 16384 /* a power of two, four times PD_MEMO_MAX */
#define PD_BATCH 1000

static unsigned char pd_buf[PD_MAX_BYTES + 64];
static Py_ssize_t pd_len;
static PyObject *pd_memo_keys[PD_MEMO_SLOTS];
static int pd_memo_index[PD_MEMO_SLOTS];
static int pd_memo_used[PD_MEMO_MAX];
static int pd_memo_count; /* memo indices handed out (pickle's memo size) */
static int pd_memo_entries; /* of them, the ones in the table (pd_memo_used) */
static int pd_busy;
static PyObject *pd_writer; /* borrowed, while a dump runs for encode_records; else NULL */
static PyObject *pd_keep;   /* a list holding the memoized objects once Python code may run */

/* 0 when ``n`` more bytes fit, else 1 (hand back). */
static inline int
pd_room(Py_ssize_t n)
{
    return n > PD_MAX_BYTES - pd_len;
}

static inline int
pd_byte(unsigned char c)
{
    if (pd_room(1)) {
        return 1;
    }
    pd_buf[pd_len++] = c;
    return 0;
}

static inline int
pd_write(const void *data, Py_ssize_t n)
{
    if (pd_room(n)) {
        return 1;
    }
    memcpy(pd_buf + pd_len, data, (size_t)n);
    pd_len += n;
    return 0;
}

static inline Py_ssize_t
pd_slot(PyObject *obj)
{
    return (Py_ssize_t)(((uintptr_t)obj >> 4) * 0x9E3779B1u) & (PD_MEMO_SLOTS - 1);
}

/* The memo index of ``obj``, or -1. */
static int
pd_memo_get(PyObject *obj)
{
    for (Py_ssize_t i = pd_slot(obj);; i = (i + 1) & (PD_MEMO_SLOTS - 1)) {
        if (pd_memo_keys[i] == obj) {
            return pd_memo_index[i];
        }
        if (pd_memo_keys[i] == NULL) {
            return -1;
        }
    }
}

/* MEMOIZE ``obj``; 1 past PD_MEMO_MAX (hand back), -1 on an error. */
static int
pd_memo_put(PyObject *obj)
{
    if (pd_memo_count >= PD_MEMO_MAX || pd_byte(0x94)) {
        return 1;
    }
    if (pd_keep != NULL && PyList_Append(pd_keep, obj) < 0) {
        return -1;
    }
    Py_ssize_t i = pd_slot(obj);
    while (pd_memo_keys[i] != NULL) {
        i = (i + 1) & (PD_MEMO_SLOTS - 1);
    }
    pd_memo_keys[i] = obj;
    pd_memo_index[i] = pd_memo_count++;
    pd_memo_used[pd_memo_entries++] = (int)i;
    return 0;
}

/* BINGET or LONG_BINGET of memo entry ``index``. */
static int
pd_memo_write_get(int index)
{
    if (index < 256) {
        unsigned char data[2] = {'h', (unsigned char)index}; /* BINGET */
        return pd_write(data, 2);
    }
    unsigned char data[5] = {'j', (unsigned char)(index & 0xff), (unsigned char)((index >> 8) & 0xff),
                             (unsigned char)((index >> 16) & 0xff),
                             (unsigned char)((index >> 24) & 0xff)}; /* LONG_BINGET */
    return pd_write(data, 5);
}

static void
pd_memo_clear(void)
{
    for (int k = 0; k < pd_memo_entries; k++) {
        pd_memo_keys[pd_memo_used[k]] = NULL;
    }
    pd_memo_count = 0;
    pd_memo_entries = 0;
}

/* Hold every memoized object from here on (Python code is about to run). */
static int
pd_hold_memo(void)
{
    if (pd_keep != NULL) {
        return 0;
    }
    PyObject *keep = PyList_New(pd_memo_entries);
    if (keep == NULL) {
        return -1;
    }
    for (int k = 0; k < pd_memo_entries; k++) {
        PyList_SET_ITEM(keep, k, Py_NewRef(pd_memo_keys[pd_memo_used[k]]));
    }
    pd_keep = keep;
    return 0;
}

static inline int
pd_size_op(unsigned char short_op, unsigned char long_op, Py_ssize_t n)
{
    if (n < 256) {
        unsigned char head[2] = {short_op, (unsigned char)n};
        return pd_write(head, 2);
    }
    unsigned char head[5] = {long_op, (unsigned char)(n & 0xff), (unsigned char)((n >> 8) & 0xff),
                             (unsigned char)((n >> 16) & 0xff), (unsigned char)((n >> 24) & 0xff)};
    return pd_write(head, 5);
}

static int pd_save(PyObject *obj, int depth);
static int pd_save_persistent(PyObject *obj);
static PyObject *speedups_reference(PyObject *module, PyObject *const *args, Py_ssize_t nargs);

/* pd_save of ``item`` of a container, held while it is written. */
static inline int
pd_save_item(PyObject *item, int depth)
{
    Py_INCREF(item);
    int done = pd_save(item, depth);
    Py_DECREF(item);
    return done;
}

/* 0 written, 1 hand back, -1 an error (set).  Containers nest at most ``depth``
 * deep (the C stack's bound; is_plain's too). */
static int
pd_save(PyObject *obj, int depth)
{
    PyTypeObject *type = Py_TYPE(obj);
    if (obj == Py_None) {
        return pd_byte('N');
    }
    if (obj == Py_True || obj == Py_False) {
        return pd_byte(obj == Py_True ? 0x88 : 0x89);
    }
    if (type == &PyLong_Type) {
        int overflow;
        long long value = PyLong_AsLongLongAndOverflow(obj, &overflow);
        if (value == -1 && PyErr_Occurred()) {
            return -1;
        }
        if (overflow || value < -2147483647LL - 1 || value > 2147483647LL) {
            return 1; /* LONG1: pickle's own */
        }
        unsigned char data[5];
        data[1] = (unsigned char)(value & 0xff);
        data[2] = (unsigned char)((value >> 8) & 0xff);
        data[3] = (unsigned char)((value >> 16) & 0xff);
        data[4] = (unsigned char)((value >> 24) & 0xff);
        if (data[4] != 0 || data[3] != 0) {
            data[0] = 'J'; /* BININT */
            return pd_write(data, 5);
        }
        if (data[2] != 0) {
            data[0] = 'M'; /* BININT2 */
            return pd_write(data, 3);
        }
        data[0] = 'K'; /* BININT1 */
        return pd_write(data, 2);
    }
    if (type == &PyFloat_Type) {
        unsigned char data[9];
        data[0] = 'G'; /* BINFLOAT */
        if (PyFloat_Pack8(PyFloat_AS_DOUBLE(obj), (char *)data + 1, 0) < 0) {
            return -1;
        }
        return pd_write(data, 9);
    }
    int index = pd_memo_get(obj);
    if (index >= 0) {
        return pd_memo_write_get(index);
    }
    int done;
    if (depth <= 0 && (type == &PyList_Type || type == &PyDict_Type || type == &PyTuple_Type)) {
        return 1;
    }
    if (type == &PyUnicode_Type) {
        if (!PyUnicode_IS_ASCII(obj)) {
            return 1;
        }
        Py_ssize_t n = PyUnicode_GET_LENGTH(obj);
        /* SHORT_BINUNICODE, BINUNICODE */
        if ((done = pd_size_op(0x8c, 'X', n)) != 0 || (done = pd_write(PyUnicode_DATA(obj), n)) != 0) {
            return done;
        }
        return pd_memo_put(obj);
    }
    if (type == &PyBytes_Type) {
        Py_ssize_t n = PyBytes_GET_SIZE(obj);
        /* SHORT_BINBYTES, BINBYTES */
        if ((done = pd_size_op('C', 'B', n)) != 0 ||
            (done = pd_write(PyBytes_AS_STRING(obj), n)) != 0) {
            return done;
        }
        return pd_memo_put(obj);
    }
    if (type == &PyList_Type) {
        if ((done = pd_byte(']')) != 0 || (done = pd_memo_put(obj)) != 0) { /* EMPTY_LIST */
            return done;
        }
        /* As pickle's batch_list_exact: the list's size read again at each
         * step (Python code run by a reference could change it). */
        if (PyList_GET_SIZE(obj) == 1) {
            if ((done = pd_save_item(PyList_GET_ITEM(obj, 0), depth - 1)) != 0) {
                return done;
            }
            return pd_byte('a'); /* APPEND */
        }
        for (Py_ssize_t total = 0; total < PyList_GET_SIZE(obj);) {
            if ((done = pd_byte('(')) != 0) { /* MARK */
                return done;
            }
            for (int batch = 0; total < PyList_GET_SIZE(obj) && batch < PD_BATCH;
                 batch++, total++) {
                if ((done = pd_save_item(PyList_GET_ITEM(obj, total), depth - 1)) != 0) {
                    return done;
                }
            }
            if ((done = pd_byte('e')) != 0) { /* APPENDS */
                return done;
            }
        }
        return 0;
    }
    if (type == &PyDict_Type) {
        if ((done = pd_byte('}')) != 0 || (done = pd_memo_put(obj)) != 0) { /* EMPTY_DICT */
            return done;
        }
        Py_ssize_t n = PyDict_GET_SIZE(obj), pos = 0;
        PyObject *key, *value;
        if (n == 0) {
            return 0;
        }
        if (n == 1) {
            PyDict_Next(obj, &pos, &key, &value);
            Py_INCREF(value);
            done = pd_save_item(key, depth - 1);
            if (done == 0) {
                done = pd_save(value, depth - 1);
            }
            Py_DECREF(value);
            if (done != 0) {
                return done;
            }
            return pd_byte('s'); /* SETITEM */
        }
        int batch;
        do { /* as pickle: a size that is a multiple of 1000 ends with an empty batch */
            if ((done = pd_byte('(')) != 0) {
                return done;
            }
            for (batch = 0; batch < PD_BATCH && PyDict_Next(obj, &pos, &key, &value); batch++) {
                Py_INCREF(value);
                done = pd_save_item(key, depth - 1);
                if (done == 0) {
                    done = pd_save(value, depth - 1);
                }
                Py_DECREF(value);
                if (done != 0) {
                    return done;
                }
            }
            if ((done = pd_byte('u')) != 0) { /* SETITEMS */
                return done;
            }
            if (PyDict_GET_SIZE(obj) != n) {
                return 1; /* changed while written: pickle raises RuntimeError */
            }
        } while (batch == PD_BATCH);
        return 0;
    }
    if (type == &PyTuple_Type) {
        Py_ssize_t n = PyTuple_GET_SIZE(obj);
        if (n == 0) {
            return pd_byte(')'); /* EMPTY_TUPLE, not memoized */
        }
        if (n > 3 && (done = pd_byte('(')) != 0) {
            return done;
        }
        for (Py_ssize_t i = 0; i < n; i++) {
            if ((done = pd_save(PyTuple_GET_ITEM(obj, i), depth - 1)) != 0) {
                return done;
            }
        }
        if (pd_memo_get(obj) >= 0) {
            return 1; /* a recursive tuple: pickle's own */
        }
        /* TUPLE1, TUPLE2, TUPLE3, TUPLE */
        if ((done = pd_byte(n == 1 ? 0x85 : n == 2 ? 0x86 : n == 3 ? 0x87 : 't')) != 0) {
            return done;
        }
        return pd_memo_put(obj);
    }
    if (pd_writer != NULL && persistent_base != NULL && PyObject_TypeCheck(obj, persistent_base)) {
        return pd_save_persistent(obj);
    }
    return 1;
}

/* A class as pickle's save_global writes it at protocol 5: its module and
 * qualified name (each memoized, or from the memo), STACK_GLOBAL, MEMOIZE.
 * Only a class of the plain metaclass that the module holds under its name
 * (pickle's check that the global is found), named without a dot, while
 * copyreg's extension registry is empty (pickle's EXT codes): anything else
 * is handed back.  Runs no Python code. */
static int
pd_save_global(PyObject *cls)
{
    if (!Py_IS_TYPE(cls, &PyType_Type) ||
        !PyType_HasFeature((PyTypeObject *)cls, Py_TPFLAGS_HEAPTYPE) ||
        pd_extension_registry == NULL || !PyDict_CheckExact(pd_extension_registry) ||
        PyDict_GET_SIZE(pd_extension_registry) != 0) {
        return 1;
    }
    PyObject *qualname = ((PyHeapTypeObject *)cls)->ht_qualname; /* type.__qualname__ */
    PyObject *module_name = PyDict_GetItemWithError(((PyTypeObject *)cls)->tp_dict, str_module_name);
    if (module_name == NULL) {
        return PyErr_Occurred() ? -1 : 1;
    }
    if (!PyUnicode_CheckExact(qualname) || !PyUnicode_CheckExact(module_name) ||
        !PyUnicode_IS_ASCII(qualname) || PyUnicode_GET_LENGTH(qualname) < 1 ||
        memchr(PyUnicode_DATA(qualname), '.', (size_t)PyUnicode_GET_LENGTH(qualname)) != NULL ||
        ((const char *)PyUnicode_DATA(qualname))[0] == '_') {
        return 1;
    }
    PyObject *modules = PyImport_GetModuleDict(); /* borrowed: sys.modules */
    if (modules == NULL || !PyDict_CheckExact(modules)) {
        return 1;
    }
    Py_INCREF(module_name);
    Py_INCREF(qualname);
    int done = 1;
    PyObject *module = PyDict_GetItemWithError(modules, module_name); /* borrowed */
    if (module == NULL) {
        done = PyErr_Occurred() ? -1 : 1;
    }
    else if (PyModule_CheckExact(module)) {
        PyObject *found = PyDict_GetItemWithError(PyModule_GetDict(module), qualname);
        if (found == cls) {
            done = pd_save(module_name, 1);
            if (done == 0) {
                done = pd_save(qualname, 1);
            }
            if (done == 0) {
                done = pd_byte(0x93); /* STACK_GLOBAL */
            }
            if (done == 0) {
                done = pd_memo_put(cls);
            }
        }
        else if (found == NULL && PyErr_Occurred()) {
            done = -1;
        }
    }
    Py_DECREF(qualname);
    Py_DECREF(module_name);
    return done;
}

/* A persistent object inside a state, as the writer's pickler writes it:
 * pid = reference(writer, obj), saved as the tuple it is, then BINPERSID.
 * reference() may run Python code (a storage's new_oid): the memo is held
 * from here on.  An Exception it raises is cleared and the state handed
 * back (the Python path raises it again, as SerializationError where it
 * wraps it); any other (KeyboardInterrupt) goes up. */
static int
pd_save_persistent(PyObject *obj)
{
    if (pd_hold_memo() < 0) {
        return -1;
    }
    PyObject *call[2] = {pd_writer, obj};
    PyObject *pid = speedups_reference(NULL, call, 2);
    if (pid == NULL) {
        if (PyErr_ExceptionMatches(PyExc_Exception)) {
            PyErr_Clear();
            return 1;
        }
        return -1;
    }
    int done = 1;
    if (PyTuple_CheckExact(pid) && PyTuple_GET_SIZE(pid) == 2 &&
        PyBytes_CheckExact(PyTuple_GET_ITEM(pid, 0)) && PyBytes_GET_SIZE(PyTuple_GET_ITEM(pid, 0)) == 8 &&
        PyType_Check(PyTuple_GET_ITEM(pid, 1))) {
        int index = pd_memo_get(pid);
        if (index >= 0) {
            done = pd_memo_write_get(index);
        }
        else {
            PyObject *cls = PyTuple_GET_ITEM(pid, 1);
            done = pd_save(PyTuple_GET_ITEM(pid, 0), 1);
            if (done == 0) {
                int known = pd_memo_get(cls);
                done = known >= 0 ? pd_memo_write_get(known) : pd_save_global(cls);
            }
            if (done == 0) {
                done = pd_byte(0x86); /* TUPLE2 */
            }
            if (done == 0) {
                done = pd_memo_put(pid); /* held by pd_keep */
            }
        }
        if (done == 0) {
            done = pd_byte('Q'); /* BINPERSID */
        }
    }
    Py_DECREF(pid);
    return done;
}

/* ``prefix`` + pickle.dumps(value, 5) as new bytes; None to hand back; NULL on an error.
 * Given a ``writer`` (an ObjectWriter whose reference is speedups.reference),
 * a persistent object inside is written as its pickler writes it, and
 * ``*referenced`` says whether reference() ran (then the writer's ``_refs``
 * hold what it gathered, whatever the answer); without one (NULL), a
 * persistent object is handed back. */
static PyObject *
plain_dump(PyObject *prefix, PyObject *value, PyObject *writer, int *referenced)
{
    if (referenced != NULL) {
        *referenced = 0;
    }
    if (pd_busy) {
        Py_RETURN_NONE; /* entered from the Python code a reference ran */
    }
    pd_busy = 1;
    pd_writer = writer;
    Py_ssize_t head = PyBytes_GET_SIZE(prefix);
    pd_len = 0;
    int done = pd_write("\x80\x05\x95\0\0\0\0\0\0\0\0", 11); /* PROTO 5, FRAME (its size below) */
    if (done == 0) {
        done = pd_save(value, 16);
    }
    if (done == 0) {
        done = pd_byte('.'); /* STOP */
    }
    pd_memo_clear();
    pd_writer = NULL;
    PyObject *keep = pd_keep; /* set from the first reference on (pd_hold_memo) */
    pd_keep = NULL;
    if (referenced != NULL) {
        *referenced = keep != NULL;
    }
    pd_busy = 0;
    Py_XDECREF(keep); /* last: freeing what it held may run Python code */
    if (done != 0) {
        if (done > 0) {
            Py_RETURN_NONE;
        }
        return NULL;
    }
    Py_ssize_t frame = pd_len - 11, start = 11;
    if (frame >= 4) {
        for (int k = 0; k < 8; k++) {
            pd_buf[3 + k] = (unsigned char)(((uint64_t)frame >> (8 * k)) & 0xff);
        }
        start = 0;
    }
    else {
        /* A frame under 4 bytes is not framed (pickle drops its header). */
        pd_buf[9] = 0x80;
        pd_buf[10] = 0x05;
        start = 9;
    }
    PyObject *data = PyBytes_FromStringAndSize(NULL, head + pd_len - start);
    if (data != NULL) {
        memcpy(PyBytes_AS_STRING(data), PyBytes_AS_STRING(prefix), (size_t)head);
        memcpy(PyBytes_AS_STRING(data) + head, pd_buf + start, (size_t)(pd_len - start));
    }
    return data;
}

/* encode_plain(prefix, state, dumps) -> prefix + dumps(state, 5) | None
 *
 * PickleSerializer.encode's record for a state of plain data, made without
 * the persistent-object probe: such a state holds no persistent object.
 * plain_dump writes most; one it hands back is pickled by ``dumps`` if
 * is_plain says it is plain (nested at most 16 deep, 4096 entries in all).
 * None for any other state, untouched: the Python path then decides.
 */
static PyObject *
speedups_encode_plain(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || !PyBytes_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "encode_plain(prefix, state, dumps)");
        return NULL;
    }
    /* plain_dump answers most states, and hands back any it does not write
     * (a persistent object inside among them); only those are walked again. */
    PyObject *written = plain_dump(args[0], args[1], NULL, NULL);
    if (written != Py_None) {
        return written; /* the bytes, or NULL on an error */
    }
    Py_DECREF(written);
    Py_ssize_t budget = 4096;
    if (!is_plain(args[1], 16, &budget)) {
        Py_RETURN_NONE;
    }
    PyObject *protocol = PyLong_FromLong(5);
    if (protocol == NULL) {
        return NULL;
    }
    PyObject *call[2] = {args[1], protocol};
    PyObject *pickled = PyObject_Vectorcall(args[2], call, 2, NULL);
    Py_DECREF(protocol);
    if (pickled == NULL) {
        return NULL;
    }
    if (!PyBytes_CheckExact(pickled)) {
        Py_DECREF(pickled);
        PyErr_SetString(PyExc_TypeError, "encode_plain(): dumps did not return bytes");
        return NULL;
    }
    Py_ssize_t head = PyBytes_GET_SIZE(args[0]), body = PyBytes_GET_SIZE(pickled);
    PyObject *data = PyBytes_FromStringAndSize(NULL, head + body);
    if (data != NULL) {
        memcpy(PyBytes_AS_STRING(data), PyBytes_AS_STRING(args[0]), head);
        memcpy(PyBytes_AS_STRING(data) + head, PyBytes_AS_STRING(pickled), body);
    }
    Py_DECREF(pickled);
    return data;
}

/* b"".join(refs), the keys of the dict ``refs`` (bytes); NULL with TypeError otherwise. */
static PyObject *
join_refs(PyObject *refs)
{
    Py_ssize_t pos = 0, size = 0;
    PyObject *key, *value;
    while (PyDict_Next(refs, &pos, &key, &value)) {
        if (!PyBytes_CheckExact(key)) {
            PyErr_SetString(PyExc_TypeError, "encode_records(): writer._refs holds a key that is not bytes");
            return NULL;
        }
        size += PyBytes_GET_SIZE(key);
    }
    PyObject *joined = PyBytes_FromStringAndSize(NULL, size);
    if (joined == NULL) {
        return NULL;
    }
    /* The same keys again: the allocation runs no Python code. */
    char *at = PyBytes_AS_STRING(joined);
    pos = 0;
    while (PyDict_Next(refs, &pos, &key, &value)) {
        memcpy(at, PyBytes_AS_STRING(key), (size_t)PyBytes_GET_SIZE(key));
        at += PyBytes_GET_SIZE(key);
    }
    return joined;
}

/* writer._refs = {} */
static int
reset_refs(PyObject *writer)
{
    PyObject *fresh = PyDict_New();
    if (fresh == NULL) {
        return -1;
    }
    int failed = PyObject_SetAttr(writer, str_refs, fresh);
    Py_DECREF(fresh);
    return failed;
}

/* encode_records(queue, seen, records, prefixes, getstate, fallback[, writer, slots_getstate]) -> None
 *
 * ObjectWriter.records' loop: pop each object off the list ``queue`` (from
 * its end) until it is empty; one whose oid is in the set ``seen`` is
 * skipped.  An object of a class with a known record prefix
 * (``prefixes[type(obj)]``, serialize._CLASS_PREFIXES), the default
 * ``__getstate__`` (``getstate``, Persistent's) and a state of plain data
 * that plain_dump writes is appended to ``records`` as ``(oid, prefix +
 * state pickle, b"")``, its oid added to ``seen``: the bytes
 * PickleSerializer.encode makes.  Any other object is handed to
 * ``fallback(obj)``, the Python step, which does the same (or raises), and
 * may push more objects onto ``queue`` (the new objects its state
 * references).
 *
 * Given the ObjectWriter ``writer`` (None: not), whose reference is
 * speedups.reference, a state may hold persistent objects: plain_dump
 * writes each as the writer's pickler does (reference(writer, obj) pushes
 * the new ones onto ``queue``), and the record's refs are the writer's
 * ``_refs``, joined, which then become a new dict.  An object whose
 * ``__getstate__`` is ``slots_getstate`` (PersistentObject's:
 * PersistentDict, PersistentList...) has its state from that call.  A state
 * handed back leaves ``writer._refs`` empty for the fallback.
 */
static PyObject *
speedups_encode_records(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if ((nargs != 6 && nargs != 8) || persistent_base == NULL || !PyList_CheckExact(args[0]) ||
        !PySet_CheckExact(args[1]) || !PyList_CheckExact(args[2]) || !PyDict_CheckExact(args[3])) {
        PyErr_SetString(PyExc_TypeError,
                        "encode_records(queue: list, seen: set, records: list, prefixes: dict, "
                        "getstate, fallback[, writer, slots_getstate]), once configured");
        return NULL;
    }
    PyObject *queue = args[0], *seen = args[1], *records = args[2], *prefixes = args[3];
    PyObject *getstate = args[4], *fallback = args[5];
    PyObject *writer = nargs == 8 && args[6] != Py_None ? args[6] : NULL;
    PyObject *slots_getstate = nargs == 8 && writer != NULL ? args[7] : NULL;
    static PyObject *empty = NULL;
    if (empty == NULL && (empty = PyBytes_FromStringAndSize(NULL, 0)) == NULL) {
        return NULL;
    }
    Py_ssize_t n;
    while ((n = PyList_GET_SIZE(queue)) > 0) {
        PyObject *obj = PyList_GET_ITEM(queue, n - 1);
        Py_INCREF(obj);
        if (PyList_SetSlice(queue, n - 1, n, NULL) < 0) {
            Py_DECREF(obj);
            return NULL;
        }
        PyObject *oid = PyObject_TypeCheck(obj, persistent_base) ? SLOT(obj, off_oid) : NULL;
        PyObject *prefix = NULL, *data = NULL, *refs = NULL;
        int slotted = 0, referenced = 0;
        if (oid != NULL && PyBytes_CheckExact(oid)) {
            int found = PySet_Contains(seen, oid);
            if (found != 0) {
                Py_DECREF(obj);
                if (found < 0) {
                    return NULL;
                }
                continue;
            }
            PyObject *own_getstate = _PyType_Lookup(Py_TYPE(obj), str_getstate_name);
            slotted = slots_getstate != NULL && own_getstate == slots_getstate;
            if (own_getstate == getstate || slotted) {
                prefix = PyDict_GetItemWithError(prefixes, (PyObject *)Py_TYPE(obj)); /* borrowed */
                if (prefix == NULL && PyErr_Occurred()) {
                    Py_DECREF(obj);
                    return NULL;
                }
            }
        }
        if (prefix != NULL && PyBytes_CheckExact(prefix)) {
            /* The oid and prefix are held: reference() may run Python code. */
            Py_INCREF(oid);
            Py_INCREF(prefix);
            PyObject *state = slotted ? PyObject_CallOneArg(slots_getstate, obj)
                                     : PyObject_GenericGetDict(obj, NULL);
            if (state == NULL) {
                if (!PyErr_ExceptionMatches(PyExc_Exception)) {
                    Py_DECREF(prefix);
                    Py_DECREF(oid);
                    Py_DECREF(obj);
                    return NULL;
                }
                PyErr_Clear(); /* the fallback's __getstate__ says what is wrong */
            }
            else {
                data = PyDict_CheckExact(state) ? plain_dump(prefix, state, writer, &referenced)
                                                : Py_NewRef(Py_None);
                Py_DECREF(state);
                if (data != NULL && referenced) {
                    /* The refs reference() gathered: the record's, or none (a hand back). */
                    PyObject *gathered = PyObject_GetAttr(writer, str_refs);
                    if (gathered == NULL) {
                        Py_CLEAR(data);
                    }
                    else if (!PyDict_CheckExact(gathered)) {
                        PyErr_SetString(PyExc_TypeError, "encode_records(): writer._refs is not a dict");
                        Py_CLEAR(data);
                    }
                    else if (PyDict_GET_SIZE(gathered) > 0) {
                        if (data != Py_None && (refs = join_refs(gathered)) == NULL) {
                            Py_CLEAR(data);
                        }
                        else if (reset_refs(writer) < 0) {
                            Py_CLEAR(data);
                        }
                    }
                    Py_XDECREF(gathered);
                }
                if (data == NULL) {
                    Py_XDECREF(refs);
                    Py_DECREF(prefix);
                    Py_DECREF(oid);
                    Py_DECREF(obj);
                    return NULL;
                }
                if (data == Py_None) {
                    Py_CLEAR(data);
                    Py_CLEAR(refs);
                }
            }
            Py_DECREF(prefix);
            if (data == NULL) {
                Py_DECREF(oid);
            }
        }
        if (data == NULL) {
            PyObject *done = PyObject_CallOneArg(fallback, obj);
            Py_DECREF(obj);
            if (done == NULL) {
                return NULL;
            }
            Py_DECREF(done);
            continue;
        }
        PyObject *record = PyTuple_Pack(3, oid, data, refs != NULL ? refs : empty);
        Py_DECREF(data);
        Py_XDECREF(refs);
        int failed = record == NULL || PySet_Add(seen, oid) < 0 || PyList_Append(records, record) < 0;
        Py_XDECREF(record);
        Py_DECREF(oid);
        Py_DECREF(obj);
        if (failed) {
            return NULL;
        }
    }
    Py_RETURN_NONE;
}

/* A weak reference to ``obj`` without a callback, not tracked by the garbage
 * collector.  Such a reference refers to nothing the collector follows (its
 * referent is not a reference it counts), and the collector handles one to
 * an unreachable object without moving it between its lists (only
 * references with callbacks are moved), so it never needs to be tracked;
 * the connection's cache then adds no object per entry to every full
 * collection. */
static PyObject *
new_object_ref(PyObject *obj)
{
    PyObject *ref = PyWeakref_NewRef(obj, NULL);
    if (ref != NULL && PyObject_GC_IsTracked(ref)) {
        PyObject_GC_UnTrack(ref);
    }
    return ref;
}

/* object_ref(obj) -> weakref.ref(obj), untracked (see new_object_ref). */
static PyObject *
speedups_object_ref(PyObject *module, PyObject *obj)
{
    return new_object_ref(obj);
}

/* add_object_refs(data, objects)
 *
 * ``data[obj._p_oid] = object_ref(obj)`` for each persistent object of the
 * list ``objects``, in order (_ObjectMap.add_all).
 */
static PyObject *
speedups_add_object_refs(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || persistent_base == NULL || !PyDict_Check(args[0]) ||
        !PyList_CheckExact(args[1])) {
        PyErr_SetString(PyExc_TypeError, "add_object_refs(dict, list), once configured");
        return NULL;
    }
    PyObject *data = args[0], *objects = args[1];
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(objects); i++) {
        PyObject *obj = PyList_GET_ITEM(objects, i);
        if (!PyObject_TypeCheck(obj, persistent_base)) {
            PyErr_SetString(PyExc_TypeError, "add_object_refs() takes persistent objects");
            return NULL;
        }
        PyObject *key = SLOT(obj, off_oid);
        if (key == NULL) {
            PyErr_SetString(PyExc_AttributeError, "_p_oid");
            return NULL;
        }
        Py_INCREF(obj);
        Py_INCREF(key);
        PyObject *ref = new_object_ref(obj);
        int failed = ref == NULL || PyDict_SetItem(data, key, ref) < 0;
        Py_XDECREF(ref);
        Py_DECREF(key);
        Py_DECREF(obj);
        if (failed) {
            return NULL;
        }
    }
    Py_RETURN_NONE;
}

/* sweep_refs(data) -> None
 *
 * Delete every entry of the dict ``data`` whose weak reference is dead
 * (_ObjectMap._sweep: ``del data[oid]`` for each ``oid, ref`` with ``ref() is
 * None``); a value that is not a plain weak reference is called, as there.
 */
static PyObject *
speedups_sweep_refs(PyObject *module, PyObject *data)
{
    if (!PyDict_Check(data)) {
        PyErr_SetString(PyExc_TypeError, "sweep_refs(dict)");
        return NULL;
    }
    PyObject *dead = PyList_New(0);
    if (dead == NULL) {
        return NULL;
    }
    Py_ssize_t pos = 0;
    PyObject *key, *ref;
    while (PyDict_Next(data, &pos, &key, &ref)) {
        int gone;
        if (PyWeakref_CheckRefExact(ref)) {
#if PY_VERSION_HEX >= 0x030D0000
            PyObject *obj = NULL;
            if (PyWeakref_GetRef(ref, &obj) < 0) {
                Py_DECREF(dead);
                return NULL;
            }
            gone = obj == NULL;
            Py_XDECREF(obj);
#else
            gone = PyWeakref_GET_OBJECT(ref) == Py_None;
#endif
        }
        else {
            Py_INCREF(ref);
            PyObject *obj = PyObject_CallNoArgs(ref);
            Py_DECREF(ref);
            if (obj == NULL) {
                Py_DECREF(dead);
                return NULL;
            }
            gone = obj == Py_None;
            Py_DECREF(obj);
        }
        if (gone && PyList_Append(dead, key) < 0) {
            Py_DECREF(dead);
            return NULL;
        }
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(dead); i++) {
        if (PyDict_DelItem(data, PyList_GET_ITEM(dead, i)) < 0) {
            Py_DECREF(dead);
            return NULL;
        }
    }
    Py_DECREF(dead);
    Py_RETURN_NONE;
}

/* reference(writer, obj) -> (oid, class)
 *
 * ObjectWriter.reference, the same steps: a new object (no connection) gets
 * ``writer._new_oid()`` and is attached to ``writer.connection`` (status
 * UNSAVED) and appended to ``writer.attached`` and ``writer.queue``; then
 * ``writer._refs[oid] = None``.  Anything else -- not a persistent object,
 * an object of another connection, slots unset -- goes to the Python
 * ``writer.reference(obj)``, which decides (InvalidObjectReference).
 */
/* ``type._p_class`` (borrowed): the class attribute itself when ``type`` is an
 * ordinary class (metaclass ``type``, so no metaclass descriptor can come
 * first) and the attribute is a class; NULL, no error set, otherwise. */
static inline PyObject *
p_class_of(PyTypeObject *type)
{
    if (Py_TYPE(type) != &PyType_Type) {
        return NULL;
    }
    PyObject *cls = _PyType_Lookup(type, str_p_class); /* borrowed */
    return cls != NULL && PyType_CheckExact(cls) ? cls : NULL;
}

/* The writer attributes reference() reads, from the writer's __dict__ when no
 * name is a data descriptor of its type (instance_dict); every call reads them
 * anew, as ObjectWriter.reference does. */
enum { WR_CONNECTION, WR_NEW_OID, WR_ATTACHED, WR_QUEUE, WR_REFS, WR_NAMES };
static dict_reads writer_reads;

/* ``d[name]`` (borrowed) when ``d`` is not NULL and holds it, else NULL, no error set. */
static inline PyObject *
dict_peek(PyObject *d, PyObject *name)
{
    if (d == NULL) {
        return NULL;
    }
    PyObject *value = PyDict_GetItemWithError(d, name);
    if (value == NULL) {
        PyErr_Clear();
    }
    return value;
}

/* ``writer.<name>.append(obj)``, the list from the writer's __dict__ ``d`` when there. */
static int
append_to_dict(PyObject *d, PyObject *writer, PyObject *name, PyObject *obj)
{
    PyObject *target = dict_peek(d, name);
    if (target != NULL && PyList_CheckExact(target)) {
        Py_INCREF(target); /* the append may free the dict's entry (it runs no code, but) */
        int failed = PyList_Append(target, obj);
        Py_DECREF(target);
        return failed;
    }
    return append_to(writer, name, obj);
}

static PyObject *
speedups_reference(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || persistent_base == NULL) {
        PyErr_SetString(PyExc_TypeError, "reference(writer, obj), once configured");
        return NULL;
    }
    PyObject *writer = args[0], *obj = args[1];
    PyObject *connection = PyObject_TypeCheck(obj, persistent_base)
                               ? SLOT(obj, off_connection) : NULL;
    if (connection == NULL || SLOT(obj, off_oid) == NULL) {
        return PyObject_CallMethodOneArg(writer, str_reference, obj);
    }
    PyObject *names[WR_NAMES] = {str_connection, str_new_oid, str_attached, str_queue, str_refs};
    PyObject *d = instance_dict(&writer_reads, writer, names, WR_NAMES);
    PyObject *own = dict_peek(d, str_connection);
    if (own != NULL) {
        Py_INCREF(own);
    }
    else if ((own = PyObject_GetAttr(writer, str_connection)) == NULL) {
        Py_XDECREF(d);
        return NULL;
    }
    if (connection != Py_None && connection != own) {
        Py_DECREF(own);
        Py_XDECREF(d);
        return PyObject_CallMethodOneArg(writer, str_reference, obj);
    }
    if (connection == Py_None) {
        /* [OBJ-006] A new object is stored in the same transaction. */
        PyObject *source = dict_peek(d, str_new_oid);
        PyObject *new_oid = source != NULL ? PyObject_CallNoArgs(source)
                                           : PyObject_CallMethodNoArgs(writer, str_new_oid);
        if (new_oid == NULL) {
            Py_DECREF(own);
            Py_XDECREF(d);
            return NULL;
        }
        slot_set(obj, off_oid, new_oid);
        slot_set(obj, off_connection, own);
        slot_set(obj, off_status, value_unsaved);
        Py_DECREF(new_oid);
        /* The new oid's source may have run Python code: the dict is found again. */
        Py_XDECREF(d);
        d = instance_dict(&writer_reads, writer, names, WR_NAMES);
        if (append_to_dict(d, writer, str_attached, obj) < 0 ||
            append_to_dict(d, writer, str_queue, obj) < 0) {
            Py_DECREF(own);
            Py_XDECREF(d);
            return NULL;
        }
    }
    Py_DECREF(own);
    PyObject *oid = SLOT(obj, off_oid);
    Py_INCREF(oid);
    PyObject *result = NULL;
    /* [OBJ-005] Each referenced oid once, in first-seen order. */
    PyObject *refs = dict_peek(d, str_refs);
    if (refs != NULL) {
        Py_INCREF(refs);
    }
    else {
        refs = PyObject_GetAttr(writer, str_refs);
    }
    Py_XDECREF(d);
    int stored = refs == NULL ? -1
                 : PyDict_CheckExact(refs) ? PyDict_SetItem(refs, oid, Py_None)
                                           : PyObject_SetItem(refs, oid, Py_None);
    if (stored == 0) {
        PyObject *cls = p_class_of(Py_TYPE(obj));
        if (cls != NULL) {
            result = PyTuple_Pack(2, oid, cls);
        }
        else if ((cls = PyObject_GetAttr((PyObject *)Py_TYPE(obj), str_p_class)) != NULL) {
            result = PyTuple_Pack(2, oid, cls);
            Py_DECREF(cls);
        }
    }
    Py_XDECREF(refs);
    Py_DECREF(oid);
    return result;
}

/* Put ``obj`` back in its real class (out of the ghost or tracked class); -1 on an error. */
static int
restore_real_class(PyObject *obj)
{
    PyObject *real = p_class_of(Py_TYPE(obj));
    if (real == (PyObject *)Py_TYPE(obj)) {
        return 0; /* in its real class already */
    }
    if (real != NULL) {
        Py_INCREF(real);
    }
    else if ((real = PyObject_GetAttr((PyObject *)Py_TYPE(obj), str_p_class)) == NULL) {
        return -1;
    }
    int failed = (PyObject *)Py_TYPE(obj) != real && PyObject_GenericSetAttr(obj, str_class, real) < 0;
    Py_DECREF(real);
    return failed ? -1 : 0;
}

/* Status SAVED, ``_p_serial`` ``serial``, ``_p_size`` ``size``; returns the previous
 * ``_p_size`` (a new reference), or NULL with AttributeError when it has none. */
static PyObject *
set_saved(PyObject *obj, PyObject *serial, PyObject *size)
{
    PyObject *previous = SLOT(obj, off_size);
    if (previous == NULL) {
        PyErr_SetString(PyExc_AttributeError, "_p_size");
        return NULL;
    }
    Py_INCREF(previous);
    slot_set(obj, off_status, value_saved);
    slot_set(obj, off_serial, serial);
    slot_set(obj, off_size, size);
    return previous;
}

/* mark_all_saved(objects, sizes, serial, loaded) -> the change in loaded bytes
 *
 * The commit's step for each written object of the list ``objects``, in
 * order, as Connection.commit's Python loop does it: its real class (out
 * of the tracked class), status SAVED, ``_p_serial`` ``serial``,
 * ``_p_size`` ``sizes[oid]``, and ``loaded[oid] = obj``.  Returns the sum
 * of each new size less the object's previous ``_p_size``.  An object that
 * is not persistent raises TypeError; an oid missing from ``sizes``
 * KeyError, the objects before it marked (as the Python loop leaves them).
 */
static PyObject *
speedups_mark_all_saved(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || persistent_base == NULL || !PyList_CheckExact(args[0]) ||
        !PyDict_CheckExact(args[1]) || !PyDict_CheckExact(args[3])) {
        PyErr_SetString(PyExc_TypeError,
                        "mark_all_saved(list, dict, serial, dict), once configured");
        return NULL;
    }
    PyObject *objects = args[0], *sizes = args[1], *serial = args[2], *loaded = args[3];
    Py_ssize_t delta = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(objects); i++) {
        PyObject *obj = PyList_GET_ITEM(objects, i);
        Py_INCREF(obj);
        PyObject *oid = NULL, *previous = NULL;
        int failed = 1;
        if (!PyObject_TypeCheck(obj, persistent_base)) {
            PyErr_SetString(PyExc_TypeError, "mark_all_saved() takes persistent objects");
            goto next;
        }
        oid = SLOT(obj, off_oid);
        if (oid == NULL) {
            PyErr_SetString(PyExc_AttributeError, "_p_oid");
            goto next;
        }
        Py_INCREF(oid);
        PyObject *size = PyDict_GetItemWithError(sizes, oid); /* borrowed */
        if (size == NULL) {
            if (!PyErr_Occurred()) {
                PyErr_SetObject(PyExc_KeyError, oid);
            }
            goto next;
        }
        Py_INCREF(size);
        if (restore_real_class(obj) < 0 || (previous = set_saved(obj, serial, size)) == NULL) {
            Py_DECREF(size);
            goto next;
        }
        Py_ssize_t new_size = PyLong_AsSsize_t(size);
        Py_ssize_t old_size = PyLong_AsSsize_t(previous);
        Py_DECREF(size);
        if ((new_size == -1 || old_size == -1) && PyErr_Occurred()) {
            goto next;
        }
        delta += new_size - old_size;
        failed = PyDict_SetItem(loaded, oid, obj) < 0;
    next:
        Py_XDECREF(previous);
        Py_XDECREF(oid);
        Py_DECREF(obj);
        if (failed) {
            return NULL;
        }
    }
    return PyLong_FromSsize_t(delta);
}

/* clock_batch(batch, loaded, changed, cache_size, cache_bytes, loaded_bytes, budget)
 *     -> (loaded_bytes, budget, within) | None
 *
 * One batch of Connection.shrink_cache's clock hand, the same steps as its
 * Python loop: ``batch`` is a list of (oid, obj) from the old end of
 * ``loaded``; ``cache_bytes`` is -1 for no byte bound.  A saved, unchanged
 * object in its tracked class is ghosted (its own _p_set_status_ghost) and
 * leaves ``loaded``; one in its real class is armed (enters the tracked
 * class); either kind that stays moves to the young end.  ``within`` is
 * True once the cache is within its bounds (the hand stops).  None, with
 * nothing changed, for a batch that is not a list of (bytes, persistent
 * object) pairs or arguments of other types: the Python loop decides.  The arming
 * pass over a cache that filled up is the cost this saves: every object, once.
 */
static PyObject *
speedups_clock_batch(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 7 || persistent_base == NULL) {
        PyErr_SetString(PyExc_TypeError,
                        "clock_batch(batch, loaded, changed, cache_size, cache_bytes, "
                        "loaded_bytes, budget), once configured");
        return NULL;
    }
    PyObject *batch = args[0], *loaded = args[1], *changed = args[2];
    if (!PyList_CheckExact(batch) || !PyDict_CheckExact(loaded) || !PyDict_CheckExact(changed)) {
        Py_RETURN_NONE; /* not the cache: the Python hand decides (CONV-007) */
    }
    long long cache_size, cache_bytes, loaded_bytes, budget;
    if (((cache_size = PyLong_AsLongLong(args[3])) == -1 && PyErr_Occurred()) ||
        ((cache_bytes = PyLong_AsLongLong(args[4])) == -1 && PyErr_Occurred()) ||
        ((loaded_bytes = PyLong_AsLongLong(args[5])) == -1 && PyErr_Occurred()) ||
        ((budget = PyLong_AsLongLong(args[6])) == -1 && PyErr_Occurred())) {
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    Py_ssize_t count = PyList_GET_SIZE(batch);
    /* Every entry is checked before any is touched: a batch this does not
     * handle whole is handed back unchanged. */
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *entry = PyList_GET_ITEM(batch, i);
        if (!PyTuple_CheckExact(entry) || PyTuple_GET_SIZE(entry) != 2 ||
            !PyBytes_CheckExact(PyTuple_GET_ITEM(entry, 0)) ||
            !PyObject_TypeCheck(PyTuple_GET_ITEM(entry, 1), persistent_base)) {
            Py_RETURN_NONE;
        }
    }
    int within = 0;
    for (Py_ssize_t i = 0; i < count; i++) {
        int over = PyDict_GET_SIZE(loaded) > cache_size ||
                   (cache_bytes >= 0 && loaded_bytes > cache_bytes);
        if (budget <= 0 || !over) {
            within = !over;
            break;
        }
        budget -= 1;
        PyObject *entry = PyList_GET_ITEM(batch, i);
        PyObject *oid = PyTuple_GET_ITEM(entry, 0), *obj = PyTuple_GET_ITEM(entry, 1);
        int in_changed = PyDict_Contains(changed, oid);
        if (in_changed < 0) {
            goto failed;
        }
        int saved = 0;
        if (!in_changed) {
            PyObject *status = SLOT(obj, off_status);
            saved = status == NULL ? 0 : PyObject_RichCompareBool(status, value_saved, Py_EQ);
            if (saved < 0) {
                goto failed;
            }
        }
        if (saved) {
            PyObject *real = PyObject_GetAttr((PyObject *)Py_TYPE(obj), str_p_class);
            if (real == NULL) {
                goto failed;
            }
            PyObject *tracked = PyObject_GetAttr(real, str_p_tracked_class);
            if (tracked == NULL) {
                Py_DECREF(real);
                goto failed;
            }
            int is_tracked = (PyObject *)Py_TYPE(obj) == tracked;
            int failed = 0;
            if (is_tracked) {
                /* Not used since it was armed: it goes. */
                PyObject *done = PyObject_CallMethodNoArgs(obj, str_p_set_status_ghost);
                failed = done == NULL || PyDict_DelItem(loaded, oid) < 0;
                Py_XDECREF(done);
                if (!failed) {
                    PyObject *size = SLOT(obj, off_size);
                    long long bytes = size == NULL ? 0 : PyLong_AsLongLong(size);
                    failed = bytes == -1 && PyErr_Occurred();
                    if (!failed) {
                        loaded_bytes -= bytes;
                        slot_set(obj, off_size, value_zero);
                    }
                }
            }
            else if ((PyObject *)Py_TYPE(obj) == real) {
                failed = PyObject_GenericSetAttr(obj, str_class, tracked) < 0;
            }
            Py_DECREF(real);
            Py_DECREF(tracked);
            if (failed) {
                goto failed;
            }
            if (is_tracked) {
                continue;
            }
        }
        /* Armed now, or it cannot go now (changed, or not saved): to the young end.
         * The batch list holds a reference to oid and obj meanwhile. */
        if (PyDict_DelItem(loaded, oid) < 0 || PyDict_SetItem(loaded, oid, obj) < 0) {
            goto failed;
        }
    }
    return Py_BuildValue("LLO", loaded_bytes, budget, within ? Py_True : Py_False);
failed:
    return NULL;
}

/* attach(obj, oid, connection) -> None: a new object's _p_oid, _p_connection, _p_status. */
static PyObject *
speedups_attach(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 3 || persistent_base == NULL) {
        PyErr_SetString(PyExc_TypeError, "attach(obj, oid, connection), once configured");
        return NULL;
    }
    if (!PyObject_TypeCheck(args[0], persistent_base)) {
        PyErr_SetString(PyExc_TypeError, "attach() takes a persistent object");
        return NULL;
    }
    slot_set(args[0], off_oid, args[1]);
    slot_set(args[0], off_connection, args[2]);
    slot_set(args[0], off_status, value_unsaved);
    Py_RETURN_NONE;
}

/* Set by configure_connection(): Connection (exact), its Python load_state, and the
 * errors load_state treats apart.  connection_load_state() stands in for that
 * load_state while the class still has it. */
static PyObject *connection_type = NULL, *connection_load_state_py = NULL;

static PyObject *read_conflict_error = NULL, *serialization_error = NULL;
static PyObject *connection_load_state(PyObject *module, PyObject *connection, PyObject *obj);

/* The ghost class's __getattribute__ (persistent._ghost_getattribute): a _p_
 * name is read as it is; any other loads the state first, through the
 * object's connection. */
static PyObject *
ghost_getattribute(PyObject *self, PyObject *name)
{
    PyObject *connection;
    if (!PyUnicode_CheckExact(name) || !PyObject_TypeCheck(self, persistent_base) ||
        (connection = SLOT(self, off_connection)) == NULL || connection == Py_None) {
        /* The Python original says what happens (it raises, for a ghost without a
         * connection). */
        return PyObject_CallFunctionObjArgs(python_ghost_getattribute, self, name, NULL);
    }
    if (is_p_name(name)) {
        return PyObject_GenericGetAttr(self, name);
    }
    if (PyUnicode_CompareWithASCIIString(name, "__class__") == 0) {
        return PyObject_GetAttr((PyObject *)Py_TYPE(self), str_p_class);
    }
    Py_INCREF(connection);
    PyObject *result;
    if ((PyObject *)Py_TYPE(connection) == connection_type && connection_type != NULL &&
        _PyType_Lookup(Py_TYPE(connection), str_load_state) == connection_load_state_py) {
        result = connection_load_state(NULL, connection, self);
    }
    else {
        result = PyObject_CallMethodOneArg(connection, str_load_state, self);
    }
    Py_DECREF(connection);
    if (result == NULL) {
        return NULL;
    }
    Py_DECREF(result);
    return PyObject_GetAttr(self, name);
}

/* The tracked class's __getattribute__ (persistent._tracked_getattribute): the
 * real class back, the first use noted with the connection (note_read). */
static PyObject *
tracked_getattribute(PyObject *self, PyObject *name)
{
    PyObject *connection;
    if (!PyUnicode_CheckExact(name) || !PyObject_TypeCheck(self, persistent_base) ||
        (connection = SLOT(self, off_connection)) == NULL) {
        return PyObject_CallFunctionObjArgs(python_tracked_getattribute, self, name, NULL);
    }
    if (is_p_name(name)) {
        return PyObject_GenericGetAttr(self, name);
    }
    if (restore_real_class(self) < 0) {
        return NULL;
    }
    if (connection != Py_None) {
        Py_INCREF(connection);
        PyObject *result = PyObject_CallMethodOneArg(connection, str_note_read, self);
        Py_DECREF(connection);
        if (result == NULL) {
            return NULL;
        }
        Py_DECREF(result);
    }
    return PyObject_GetAttr(self, name);
}

static PyMethodDef ghost_getattribute_def = {
    "__getattribute__", (PyCFunction)ghost_getattribute, METH_O,
    "Load the state first (a ghost), then return the attribute.",
};

static PyMethodDef tracked_getattribute_def = {
    "__getattribute__", (PyCFunction)tracked_getattribute, METH_O,
    "Note the first use with the connection (tracked), then return the attribute.",
};

/* getattribute_descriptors() -> (ghost, tracked): the two __getattribute__ hooks in C. */
static PyObject *
speedups_getattribute_descriptors(PyObject *module, PyObject *unused)
{
    if (persistent_base == NULL) {
        PyErr_SetString(PyExc_TypeError, "getattribute_descriptors(), once configured");
        return NULL;
    }
    /* Descriptors of object's, as for __setattr__: every object reaches the C
     * function, which hands anything unusual to the Python original. */
    PyObject *ghost = PyDescr_NewMethod(&PyBaseObject_Type, &ghost_getattribute_def);
    PyObject *tracked = PyDescr_NewMethod(&PyBaseObject_Type, &tracked_getattribute_def);
    if (ghost == NULL || tracked == NULL) {
        Py_XDECREF(ghost);
        Py_XDECREF(tracked);
        return NULL;
    }
    return Py_BuildValue("(NN)", ghost, tracked);
}

/* install_state(obj, state, serial, size) -> the previous _p_size
 *
 * Connection.load_state's end for a ghost ``obj``: its real class back,
 * ``obj.__setstate__(state)`` (done here for Persistent's own __setstate__
 * and an exact dict state), then status SAVED, ``_p_serial`` ``serial`` and
 * ``_p_size`` ``size``.  When __setstate__ raises, the error propagates with
 * the class restored and nothing else changed (the caller makes ``obj`` a
 * ghost again).
 */
static PyObject *
speedups_install_state(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 4 || persistent_base == NULL) {
        PyErr_SetString(PyExc_TypeError, "install_state(obj, state, serial, size), once configured");
        return NULL;
    }
    PyObject *obj = args[0];
    PyObject *state = args[1];
    if (!PyObject_TypeCheck(obj, persistent_base)) {
        PyErr_SetString(PyExc_TypeError, "install_state() takes a persistent object");
        return NULL;
    }
    if (restore_real_class(obj) < 0) {
        return NULL;
    }
    PyObject *setstate = _PyType_Lookup(Py_TYPE(obj), str_setstate); /* borrowed */
    if (setstate == dict_state_setstate && setstate != NULL && PyDict_CheckExact(state)) {
        PyObject *d = PyObject_GenericGetDict(obj, NULL);
        if (d == NULL) {
            return NULL;
        }
        if (PyDict_CheckExact(d) && d != state) {
            int failed = copy_state(d, state);
            Py_DECREF(d);
            if (failed < 0) {
                return NULL;
            }
            goto installed;
        }
        Py_DECREF(d);
    }
    {
        PyObject *result = PyObject_CallMethodOneArg(obj, str_setstate, state);
        if (result == NULL) {
            return NULL;
        }
        Py_DECREF(result);
    }
installed:
    return set_saved(obj, args[2], args[3]);
}

/* --- Connection.load_state ---------------------------------------------------- */

enum {
    LS_REFRESH, LS_SNAPSHOTS, LS_STORAGE, LS_LOAD, LS_AFTER_CONFLICT, LS_READERS, LS_READER,
    LS_GET_STATE, LS_SERIAL, LS_LOADED, LS_READS, LS_LOADED_BYTES, LS_LOAD_COUNT, LS_ADD_NOTE,
    LS_NAMES
};
static const char *const load_state_names[LS_NAMES] = {
    "_refresh_pending", "_snapshots", "_storage", "load", "_after_read_conflict",
    "_state_readers", "_reader", "get_state", "_transaction_serial", "_loaded", "_reads",
    "_loaded_bytes", "_load_count", "add_note",
};
static PyObject *load_state_strs[LS_NAMES];

/* The interned name number ``which``; NULL with an error only when out of memory. */
static inline PyObject *
ls_name(int which)
{
    if (load_state_strs[which] == NULL) {
        load_state_strs[which] = PyUnicode_InternFromString(load_state_names[which]);
    }
    return load_state_strs[which];
}

/* ``obj``'s attribute number ``which`` (from its __dict__ ``d`` when not NULL). */
static PyObject *
ls_get(PyObject *d, PyObject *obj, int which)
{
    PyObject *name = ls_name(which);
    return name == NULL ? NULL : dict_get(d, obj, name);
}

/* ``obj.<which> = value`` (into its __dict__ ``d`` when not NULL); -1 on an error. */
static int
ls_set(PyObject *d, PyObject *obj, int which, PyObject *value)
{
    PyObject *name = ls_name(which);
    if (name == NULL) {
        return -1;
    }
    return d != NULL ? PyDict_SetItem(d, name, value) : PyObject_SetAttr(obj, name, value);
}

static dict_reads load_state_reads;
/* The connection's own attributes that connection_load_state reads and sets. */
static const int load_state_own[] = {
    LS_REFRESH, LS_SNAPSHOTS, LS_STORAGE, LS_READERS, LS_READER, LS_SERIAL, LS_LOADED, LS_READS,
    LS_LOADED_BYTES, LS_LOAD_COUNT,
};
#define LS_OWN (int)(sizeof(load_state_own) / sizeof(load_state_own[0]))

/* The connection's __dict__ for ls_get and ls_set (a new reference), or NULL. */
static PyObject *
load_state_dict(PyObject *connection)
{
    PyObject *names[LS_OWN];
    for (int i = 0; i < LS_OWN; i++) {
        if ((names[i] = ls_name(load_state_own[i])) == NULL) {
            PyErr_Clear();
            return NULL;
        }
    }
    return instance_dict(&load_state_reads, connection, names, LS_OWN);
}

/* The SerializationError being raised gets load_state's note naming the oid. */
static void
ls_note_oid(PyObject *oid)
{
    PyObject *type, *value, *traceback;
    PyErr_Fetch(&type, &value, &traceback);
    PyErr_NormalizeException(&type, &value, &traceback);
    if (traceback != NULL && value != NULL) {
        PyException_SetTraceback(value, traceback);
    }
    const unsigned char *o = (const unsigned char *)PyBytes_AS_STRING(oid);
    unsigned long long number = (unsigned long long)get_u32(o) << 32 | get_u32(o + 4);
    PyObject *note = PyUnicode_FromFormat("while loading the object with oid %llu", number);
    PyObject *name = ls_name(LS_ADD_NOTE);
    PyObject *done = note == NULL || name == NULL || value == NULL
                         ? NULL
                         : PyObject_CallMethodOneArg(value, name, note);
    Py_XDECREF(note);
    if (done == NULL) {
        /* The note could not be added: the error it failed with goes (as in Python). */
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(traceback);
        return;
    }
    Py_DECREF(done);
    PyErr_Restore(type, value, traceback);
}

/* ``reader(data, refs)`` for a ghost ``obj``, decoding a dict state straight
 * into its __dict__ when it can: ``reader`` is a StateReader, ``obj``'s real
 * class has Persistent's own __setstate__ (which copies a dict state into
 * the __dict__, its str keys interned) and the __dict__ is an empty exact
 * dict.  Then 1 with the __dict__ itself in ``*state``, filled as that
 * __setstate__ fills it (no temporary state dict); or 0 with the state read
 * as ``reader`` reads it (the __dict__ left empty), NULL with its error.
 * -1, nothing read and no error set, where it does not apply: the caller
 * calls ``reader``. */
static int
read_into_dict(PyObject *reader, PyObject *obj, PyObject *data, PyObject *refs, PyObject **state)
{
    *state = NULL;
    if (Py_TYPE(reader) != &StateReaderType || dict_state_setstate == NULL) {
        return -1;
    }
    PyObject *real = p_class_of(Py_TYPE(obj));
    if (real == NULL || _PyType_Lookup((PyTypeObject *)real, str_setstate) != dict_state_setstate) {
        return -1;
    }
    PyObject *d = PyObject_GenericGetDict(obj, NULL);
    if (d == NULL || !PyDict_CheckExact(d) || PyDict_GET_SIZE(d) != 0) {
        Py_XDECREF(d);
        PyErr_Clear(); /* the reader, called as always, and install_state decide */
        return -1;
    }
    /* Cleared, as copy_state clears it: an empty dict that shared its class's keys
     * becomes a small one of its own, 184 bytes with four attributes, not 272. */
    PyDict_Clear(d);
    /* The reader's steps (state_reader_vectorcall), with the __dict__ as the target. */
    StateReader *bound = (StateReader *)reader;
    Py_INCREF(bound);
    *state = pickle_state_fast(bound->class_pickles, data, refs, d);
    if (*state == NULL && !PyErr_Occurred()) {
        PyObject *call[2] = {data, refs};
        *state = PyObject_Vectorcall(bound->fallback, call, 2, NULL);
    }
    Py_DECREF(bound);
    int into = *state == d;
    Py_DECREF(d);
    return into;
}

/* Connection.load_state(obj) for an exact Connection, step for step (the Python method is
 * the reference; a refresh pending goes to it).  Returns None, or NULL with the error. */
static PyObject *
connection_load_state(PyObject *module, PyObject *connection, PyObject *obj)
{
    PyObject *oid = PyObject_TypeCheck(obj, persistent_base) ? SLOT(obj, off_oid) : NULL;
    PyObject *own = oid != NULL ? load_state_dict(connection) : NULL;
    PyObject *flag = oid != NULL && PyBytes_CheckExact(oid) && PyBytes_GET_SIZE(oid) == 8
                         ? ls_get(own, connection, LS_REFRESH)
                         : NULL;
    if (flag != Py_False) {
        /* Not the ordinary load (a refresh of the snapshot first, an odd oid): Python's. */
        Py_XDECREF(own);
        if (flag == NULL && PyErr_Occurred()) {
            return NULL;
        }
        Py_XDECREF(flag);
        PyObject *call[2] = {connection, obj};
        return PyObject_Vectorcall(connection_load_state_py, call, 2, NULL);
    }
    Py_DECREF(flag);
    Py_INCREF(oid);
    PyObject *storage = NULL, *record = NULL, *data = NULL, *refs = NULL, *state = NULL;
    PyObject *result = NULL;
    int snapshots = -1, into = 0;
    {
        PyObject *value = ls_get(own, connection, LS_SNAPSHOTS);
        if (value != NULL) {
            snapshots = PyObject_IsTrue(value);
            Py_DECREF(value);
        }
    }
    if (snapshots < 0 || (storage = ls_get(own, connection, LS_STORAGE)) == NULL) {
        goto done;
    }
    {
        PyObject *name = ls_name(LS_LOAD);
        record = name == NULL ? NULL : PyObject_CallMethodOneArg(storage, name, oid);
    }
    if (record == NULL) {
        /* [CONN-015] A read conflict is resolved when it is safe to, as in Python. */
        if (snapshots || !PyErr_ExceptionMatches(read_conflict_error)) {
            goto done;
        }
        PyObject *type, *value, *traceback;
        PyErr_Fetch(&type, &value, &traceback);
        PyErr_NormalizeException(&type, &value, &traceback);
        if (traceback != NULL && value != NULL) {
            PyException_SetTraceback(value, traceback);
        }
        PyObject *name = ls_name(LS_AFTER_CONFLICT);
        PyObject *args[3] = {connection, oid, value};
        record = name == NULL ? NULL
                              : PyObject_VectorcallMethod(name, args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET,
                                                          NULL);
        Py_XDECREF(type);
        Py_XDECREF(value);
        Py_XDECREF(traceback);
        if (record == NULL) {
            goto done;
        }
    }
    if ((PyTypeObject *)Py_TYPE(record) == record_type && PyTuple_GET_SIZE(record) == 3) {
        data = Py_NewRef(PyTuple_GET_ITEM(record, 1));
        refs = Py_NewRef(PyTuple_GET_ITEM(record, 2));
    }
    else if ((data = PyObject_GetAttrString(record, "data")) == NULL ||
             (refs = PyObject_GetAttrString(record, "refs")) == NULL) {
        goto done;
    }
    {
        /* self._state_readers[data[0]](data, refs), and on KeyError or IndexError
         * self._reader.get_state(data, refs). */
        PyObject *readers = ls_get(own, connection, LS_READERS);
        if (readers == NULL) {
            goto done;
        }
        PyObject *code = PySequence_GetItem(data, 0);
        PyObject *reader = code == NULL ? NULL : PyObject_GetItem(readers, code);
        Py_XDECREF(code);
        Py_DECREF(readers);
        if (reader != NULL) {
            into = read_into_dict(reader, obj, data, refs, &state);
            if (into < 0) {
                into = 0;
                PyObject *call[2] = {data, refs};
                state = PyObject_Vectorcall(reader, call, 2, NULL);
            }
            Py_DECREF(reader);
        }
        if (state == NULL && (PyErr_ExceptionMatches(PyExc_KeyError) ||
                              PyErr_ExceptionMatches(PyExc_IndexError))) {
            PyErr_Clear();
            PyObject *decoder = ls_get(own, connection, LS_READER);
            PyObject *name = ls_name(LS_GET_STATE);
            if (decoder != NULL && name != NULL) {
                PyObject *args[3] = {decoder, data, refs};
                state = PyObject_VectorcallMethod(name, args, 3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
            }
            Py_XDECREF(decoder);
        }
        if (state == NULL) {
            if (PyErr_ExceptionMatches(serialization_error)) {
                ls_note_oid(oid);
            }
            goto done;
        }
    }
    {
        Py_ssize_t length = PyObject_Size(data);
        PyObject *serial = length < 0 ? NULL : ls_get(own, connection, LS_SERIAL);
        PyObject *size = serial == NULL ? NULL : PyLong_FromSsize_t(length);
        PyObject *previous = NULL;
        if (size != NULL && into) {
            /* The state is in the object's __dict__ already: install_state's other steps. */
            previous = restore_real_class(obj) < 0 ? NULL : set_saved(obj, serial, size);
        }
        else if (size != NULL) {
            PyObject *install[4] = {obj, state, serial, size};
            previous = speedups_install_state(module, install, 4);
        }
        if (size != NULL) {
            if (previous == NULL) {
                /* As in Python: the object becomes a ghost again, the error goes on. */
                PyObject *type, *value, *traceback;
                PyErr_Fetch(&type, &value, &traceback);
                PyObject *ghosted = PyObject_CallMethodNoArgs(obj, str_p_set_status_ghost);
                if (ghosted == NULL) {
                    Py_XDECREF(type);
                    Py_XDECREF(value);
                    Py_XDECREF(traceback);
                }
                else {
                    Py_DECREF(ghosted);
                    PyErr_Restore(type, value, traceback);
                }
            }
        }
        Py_XDECREF(serial);
        if (previous == NULL) {
            Py_XDECREF(size);
            goto done;
        }
        /* self._loaded[oid] = obj; self._reads.append(obj);
         * self._loaded_bytes += size - previous; self._load_count += 1 */
        PyObject *loaded = ls_get(own, connection, LS_LOADED);
        int failed = loaded == NULL || PyObject_SetItem(loaded, oid, obj) < 0;
        Py_XDECREF(loaded);
        if (!failed) {
            PyObject *reads = ls_get(own, connection, LS_READS);
            if (reads == NULL) {
                failed = 1;
            }
            else if (PyList_CheckExact(reads)) {
                failed = PyList_Append(reads, obj) < 0;
            }
            else {
                PyObject *appended = PyObject_CallMethod(reads, "append", "O", obj);
                failed = appended == NULL;
                Py_XDECREF(appended);
            }
            Py_XDECREF(reads);
        }
        if (!failed) {
            PyObject *grown = PyNumber_Subtract(size, previous);
            PyObject *before = grown == NULL ? NULL : ls_get(own, connection, LS_LOADED_BYTES);
            PyObject *after = before == NULL ? NULL : PyNumber_Add(before, grown);
            failed = after == NULL || ls_set(own, connection, LS_LOADED_BYTES, after) < 0;
            Py_XDECREF(grown);
            Py_XDECREF(before);
            Py_XDECREF(after);
        }
        if (!failed) {
            PyObject *count = ls_get(own, connection, LS_LOAD_COUNT);
            PyObject *one = PyLong_FromLong(1);
            PyObject *after = count == NULL || one == NULL ? NULL : PyNumber_Add(count, one);
            failed = after == NULL || ls_set(own, connection, LS_LOAD_COUNT, after) < 0;
            Py_XDECREF(count);
            Py_XDECREF(one);
            Py_XDECREF(after);
        }
        Py_DECREF(size);
        Py_DECREF(previous);
        if (!failed) {
            result = Py_NewRef(Py_None);
        }
    }
done:
    Py_XDECREF(own);
    Py_DECREF(oid);
    Py_XDECREF(storage);
    Py_XDECREF(record);
    Py_XDECREF(data);
    Py_XDECREF(refs);
    Py_XDECREF(state);
    return result;
}

/* load_state(connection, obj): Connection.load_state's steps in C (for the tests). */
static PyObject *
speedups_load_state(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || connection_load_state_py == NULL || persistent_base == NULL) {
        PyErr_SetString(PyExc_TypeError, "load_state(connection, obj), once configured");
        return NULL;
    }
    return connection_load_state(module, args[0], args[1]);
}

/* configure_connection(Connection, Connection.load_state, ReadConflictError,
 * SerializationError): what the ghost hook's load calls and catches. */
static PyObject *
speedups_configure_connection(PyObject *module, PyObject *args)
{
    PyObject *type, *function, *conflict, *serialization;
    if (!PyArg_ParseTuple(args, "O!OO!O!:configure_connection", &PyType_Type, &type, &function,
                          &PyType_Type, &conflict, &PyType_Type, &serialization)) {
        return NULL;
    }
    Py_INCREF(type);
    Py_XSETREF(connection_type, type);
    Py_INCREF(function);
    Py_XSETREF(connection_load_state_py, function);
    Py_INCREF(conflict);
    Py_XSETREF(read_conflict_error, conflict);
    Py_INCREF(serialization);
    Py_XSETREF(serialization_error, serialization);
    Py_RETURN_NONE;
}

/* --- the module -------------------------------------------------------------- */

static PyMethodDef speedups_methods[] = {
    {"crc32", speedups_crc32, METH_VARARGS, "crc32(data, value=0): zlib.crc32's checksum."},
    {"configure", speedups_configure, METH_VARARGS,
     "configure(Record, pickle.loads, errors): what the functions below build and call."},
    {"plain_loads", speedups_plain_loads, METH_O,
     "plain_loads(data) -> (True, obj) | (False, None): pickle.loads of plain data, or not"},
    {"read_pickle_state", (PyCFunction)(void (*)(void))speedups_read_pickle_state,
     METH_FASTCALL, "read_pickle_state(class_pickles, fallback, data, refs) -> state"},
    {"state_reader", (PyCFunction)(void (*)(void))speedups_state_reader, METH_FASTCALL,
     "state_reader(class_pickles, fallback) -> reader(data, refs): read_pickle_state, bound"},
    {"read_record", (PyCFunction)(void (*)(void))speedups_read_record, METH_FASTCALL,
     "read_record(fd, offset, version, oid) -> Record | None"},
    {"first_read", speedups_first_read, METH_NOARGS,
     "first_read() -> the size of read_record's next first read (it adapts, 256..1024)"},
    {"stage_records", (PyCFunction)(void (*)(void))speedups_stage_records, METH_FASTCALL,
     "stage_records(pending, records) -> bool: JournalStorage.store_many's staging"},
    {"journal_new_oid", (PyCFunction)(void (*)(void))speedups_journal_new_oid, METH_FASTCALL,
     "journal_new_oid(storage, fallback) -> bytes: JournalStorage.new_oid"},
    {"file_load", (PyCFunction)(void (*)(void))speedups_file_load, METH_FASTCALL,
     "file_load(storage, fallback, osfile_type, oid) -> Record: FileStorage.load"},
    {"index_offset", (PyCFunction)(void (*)(void))speedups_index_offset, METH_FASTCALL,
     "index_offset(mapping, oid, last, covered_offset) -> int | None"},
    {"tail_entries", (PyCFunction)speedups_tail_entries, METH_O,
     "tail_entries(tail) -> ({number: offset}, greatest number) | None"},
    {"entry_bounds", (PyCFunction)speedups_entry_bounds, METH_O,
     "entry_bounds(entries) -> (min key, max key, min value, max value) | None"},
    {"record_sizes", (PyCFunction)speedups_record_sizes, METH_O,
     "record_sizes(records) -> {oid: len(data)} | None"},
    {"index_records", (PyCFunction)(void (*)(void))speedups_index_records, METH_FASTCALL,
     "index_records(index, records, position, header_size) -> the greatest oid | None | False: "
     "JournalStorage.end's index update"},
    {"encode_transaction", (PyCFunction)(void (*)(void))speedups_encode_transaction,
     METH_FASTCALL, "encode_transaction(tid, time_us, records, version[, distinct]) -> bytes | None"},
    {"configure_persistent", speedups_configure_persistent, METH_VARARGS,
     "configure_persistent(PersistentBase, Persistent, Persistent.__setstate__, "
     "PersistentBase.__setattr__, UNSAVED, SAVED, ghost and tracked __getattribute__)"},
    {"persistent_new", (PyCFunction)(void (*)(void))speedups_persistent_new,
     METH_FASTCALL | METH_KEYWORDS, "persistent_new(cls, *args, **kwargs): PersistentBase.__new__"},
    {"getattribute_descriptors", speedups_getattribute_descriptors, METH_NOARGS,
     "getattribute_descriptors() -> (ghost, tracked): the __getattribute__ hooks in C"},
    {"setattr_descriptor", speedups_setattr_descriptor, METH_O,
     "setattr_descriptor(PersistentBase): its __setattr__ as a C method descriptor"},
    {"load_state", (PyCFunction)(void (*)(void))speedups_load_state, METH_FASTCALL,
     "load_state(connection, obj): Connection.load_state's steps"},
    {"configure_connection", speedups_configure_connection, METH_VARARGS,
     "configure_connection(Connection, Connection.load_state, ReadConflictError, "
     "SerializationError)"},
    {"install_state", (PyCFunction)(void (*)(void))speedups_install_state, METH_FASTCALL,
     "install_state(obj, state, serial, size) -> previous _p_size"},
    {"persistent_id", (PyCFunction)(void (*)(void))speedups_persistent_id, METH_FASTCALL,
     "persistent_id(base, reference, obj) -> reference(obj) | None"},
    {"encode_records", (PyCFunction)(void (*)(void))speedups_encode_records, METH_FASTCALL,
     "encode_records(queue, seen, records, prefixes, getstate, fallback): ObjectWriter.records"},
    {"encode_plain", (PyCFunction)(void (*)(void))speedups_encode_plain, METH_FASTCALL,
     "encode_plain(prefix, state, dumps) -> prefix + dumps(state, 5) | None"},
    {"object_ref", (PyCFunction)speedups_object_ref, METH_O,
     "object_ref(obj) -> weakref.ref(obj), not tracked by the garbage collector"},
    {"sweep_refs", (PyCFunction)speedups_sweep_refs, METH_O,
     "sweep_refs(data): del data[oid] for each entry whose weak reference is dead"},
    {"add_object_refs", (PyCFunction)(void (*)(void))speedups_add_object_refs, METH_FASTCALL,
     "add_object_refs(data, objects): data[obj._p_oid] = object_ref(obj) for each"},
    {"reference", (PyCFunction)(void (*)(void))speedups_reference, METH_FASTCALL,
     "reference(writer, obj) -> (oid, class): ObjectWriter.reference"},
    {"attach", (PyCFunction)(void (*)(void))speedups_attach, METH_FASTCALL,
     "attach(obj, oid, connection): a new object's _p_oid, _p_connection, _p_status"},
    {"clock_batch", (PyCFunction)(void (*)(void))speedups_clock_batch, METH_FASTCALL,
     "clock_batch(batch, loaded, changed, cache_size, cache_bytes, loaded_bytes, budget) -> "
     "(loaded_bytes, budget, within)"},
    {"mark_all_saved", (PyCFunction)(void (*)(void))speedups_mark_all_saved, METH_FASTCALL,
     "mark_all_saved(objects, sizes, serial, loaded) -> the change in loaded bytes"},
    {"set_dict_state", (PyCFunction)(void (*)(void))speedups_set_dict_state, METH_FASTCALL,
     "set_dict_state(d, state) -> None | NotImplemented"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef speedups_module = {
    PyModuleDef_HEAD_INIT,
    "dhruva._speedups",
    "Optional C versions of dhruva's hot paths (see dhruva/speedups.py).",
    -1,
    speedups_methods,
};

PyMODINIT_FUNC
PyInit__speedups(void)
{
    crc_init();
    PyObject *module = PyModule_Create(&speedups_module);
    if (module == NULL) {
        return NULL;
    }
    if (PyType_Ready(&StateReaderType) < 0 ||
        PyModule_AddIntConstant(module, "FIRST_READ", FIRST_READ) < 0) {
        Py_DECREF(module);
        return NULL;
    }
    return module;
}
