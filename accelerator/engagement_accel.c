/*
 * The quick route of batch validation, compiled: functions.validation._quick_normalise_all
 * in C, with the same answers (tests/test_validation_fast_paths.py holds the two to them).
 *
 * It takes the accepting branch only. Every check that decides whether an event is valid is
 * still made by the Python objects the module is configured with (the compiled JSON Schemas,
 * the zone lookup, the canonical JSON encoder, the UUID constructors); what is done here is
 * the glue between them, the common timestamp shapes and the derived id. Wherever this code
 * is in doubt (an unusual timestamp, a date the datetime type refuses, a UTC instant it did
 * not make itself) it asks the Python function it replaces, so that function's answer stands.
 * An event it cannot take is None in the result, and the caller takes it by the full route.
 *
 * Payloads are health data and arrive from outside: no string is copied without its length
 * checked against the buffer, and every Python object is read through the C API after its
 * type is checked.
 */

#ifndef SOURCE_SHA256 /* set by setup.py: the SHA-256 of this file */
#define SOURCE_SHA256 "unknown"
#endif

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <datetime.h>
#include <string.h>

/* --- what configure() hands over ------------------------------------------------------------ */

/* Owned references, set by configure() once, at import of functions.validation; NULL until
 * then. Only configure() writes them, so the loop may borrow from them. */
static PyObject *whole_is_valid;      /* dict: event_type -> is_valid of the event+payload schema */
static PyObject *event_is_valid;      /* is_valid of the event schema alone */
static PyObject *payload_types;       /* dict whose keys are the known event types */
static PyObject *get_zone;            /* timestamps.get_zone */
static PyObject *utc_or_none;         /* timestamps.utc_or_none */
static PyObject *canonical_json;      /* validation._canonical_json */
static PyObject *orjson_dumps;        /* orjson.dumps, or None: canonical_json does it all */
static PyObject *orjson_option;       /* orjson.OPT_SORT_KEYS */
static PyObject *user_uuid;           /* validation._user_uuid */
static PyObject *uuid_of_text;        /* validation._uuid_of_text */
static PyObject *uuid_of_int;         /* validation._uuid_of_int */
static PyObject *derive_id;           /* validation._derive_id */
static PyObject *normalised_type;     /* validation.NormalisedEvent */
static PyObject *timestamp_error;     /* functions.errors.TimestampError */
static PyObject *namespace_bytes;     /* validation._NAMESPACE_BYTES (16 bytes) */
static PyObject *sha1;                /* hashlib.sha1 */
static PyObject *uuid_slots;          /* (uuid.UUID, its "int" and "is_safe" slots,
                                         SafeUUID.unknown), or None: uuid_of_int builds them */

/* Made at import. */
static PyObject *key_event_type, *key_value, *key_timezone, *key_timestamp, *key_user_id,
    *key_event_id, *name_digest, *name_lower, *option_kwnames, *empty_tuple;
static PyObject *zone_tables; /* dict: zone -> its transition table (bytes), or None */


static PyObject *configure(PyObject *module, PyObject *args, PyObject *kwargs)
{
    (void)module;
    if (normalised_type != NULL) {
        /* Replacing what a running loop holds borrowed references into is not safe. */
        PyErr_SetString(PyExc_RuntimeError, "engagement_accel is configured once, at import");
        return NULL;
    }
    static char *names[] = {"whole_is_valid", "event_is_valid", "payload_types", "get_zone",
                            "utc_or_none", "canonical_json", "orjson_dumps", "orjson_option",
                            "user_uuid", "uuid_of_text", "uuid_of_int", "derive_id",
                            "normalised_type", "timestamp_error", "namespace_bytes", "sha1",
                            "uuid_slots", NULL};
    enum { COUNT = 17 };
    PyObject *given[COUNT];
    if (!PyArg_ParseTupleAndKeywords(
            args, kwargs, "$O!OO!OOOOOOOOOO!OSOO:configure", names, &PyDict_Type, &given[0],
            &given[1], &PyDict_Type, &given[2], &given[3], &given[4], &given[5], &given[6],
            &given[7], &given[8], &given[9], &given[10], &given[11], &PyType_Type, &given[12],
            &given[13], &given[14], &given[15], &given[16])) {
        return NULL;
    }
    if (!PyType_IsSubtype((PyTypeObject *)given[12], &PyTuple_Type)) {
        PyErr_SetString(PyExc_TypeError, "normalised_type must be a tuple subclass");
        return NULL;
    }
    PyObject *slots_given = given[16];
    if (slots_given != Py_None &&
        !(PyTuple_CheckExact(slots_given) && PyTuple_GET_SIZE(slots_given) == 4 &&
          PyType_Check(PyTuple_GET_ITEM(slots_given, 0)) &&
          Py_TYPE(PyTuple_GET_ITEM(slots_given, 1))->tp_descr_set != NULL &&
          Py_TYPE(PyTuple_GET_ITEM(slots_given, 2))->tp_descr_set != NULL)) {
        PyErr_SetString(PyExc_TypeError,
                        "uuid_slots must be None or (UUID type, int slot, is_safe slot, value)");
        return NULL;
    }
    if (PyBytes_GET_SIZE(given[14]) != 16) {
        PyErr_SetString(PyExc_ValueError, "namespace_bytes must be 16 bytes");
        return NULL;
    }
    PyObject **slots[COUNT] = {&whole_is_valid, &event_is_valid,  &payload_types,
                               &get_zone,       &utc_or_none,     &canonical_json,
                               &orjson_dumps,   &orjson_option,   &user_uuid,
                               &uuid_of_text,   &uuid_of_int,     &derive_id,
                               &normalised_type, &timestamp_error, &namespace_bytes,
                               &sha1,           &uuid_slots};
    for (int i = 0; i < COUNT; i++) {
        *slots[i] = Py_NewRef(given[i]);
    }
    Py_RETURN_NONE;
}

/* --- timestamps ------------------------------------------------------------------------------ */

/* Instants and wall-clock times as microseconds since 1970-01-01T00:00 (proleptic Gregorian),
 * the arithmetic datetime does, without an object per step. */
typedef long long micros;
#define MICROS_PER_SECOND 1000000LL
#define MICROS_PER_DAY (86400LL * MICROS_PER_SECOND)

static long long days_from_civil(long long y, int m, int d)
{
    y -= m <= 2;
    long long era = (y >= 0 ? y : y - 399) / 400;
    long long year_of_era = y - era * 400;
    long long day_of_year = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    long long day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    return era * 146097 + day_of_era - 719468;
}

static void civil_from_days(long long z, int *year, int *month, int *day)
{
    z += 719468;
    long long era = (z >= 0 ? z : z - 146096) / 146097;
    long long day_of_era = z - era * 146097;
    long long year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36524 - day_of_era / 146096) / 365;
    long long day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    long long shifted_month = (5 * day_of_year + 2) / 153;
    *day = (int)(day_of_year - (153 * shifted_month + 2) / 5 + 1);
    *month = (int)(shifted_month < 10 ? shifted_month + 3 : shifted_month - 9);
    *year = (int)(year_of_era + era * 400 + (*month <= 2));
}

static micros micros_of(int year, int month, int day, int hour, int minute, int second,
                        int microsecond)
{
    return days_from_civil(year, month, day) * MICROS_PER_DAY +
           ((hour * 60LL + minute) * 60LL + second) * MICROS_PER_SECOND + microsecond;
}

/* datetime's range: 0001-01-01T00:00 to 9999-12-31T23:59:59.999999. */
static micros earliest_micros, latest_micros;

static int days_in_month(int year, int month)
{
    static const int days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    int leap = (year % 4 == 0 && year % 100 != 0) || year % 400 == 0;
    return days[month - 1] + (month == 2 && leap);
}

static micros micros_of_timedelta(PyObject *delta)
{
    return PyDateTime_DELTA_GET_DAYS(delta) * MICROS_PER_DAY +
           PyDateTime_DELTA_GET_SECONDS(delta) * MICROS_PER_SECOND +
           PyDateTime_DELTA_GET_MICROSECONDS(delta);
}

/* The fields of a datetime, as micros (its tzinfo is not looked at). */
static micros micros_of_datetime(PyObject *moment)
{
    return micros_of(PyDateTime_GET_YEAR(moment), PyDateTime_GET_MONTH(moment),
                     PyDateTime_GET_DAY(moment), PyDateTime_DATE_GET_HOUR(moment),
                     PyDateTime_DATE_GET_MINUTE(moment), PyDateTime_DATE_GET_SECOND(moment),
                     PyDateTime_DATE_GET_MICROSECOND(moment));
}

/* An aware datetime in UTC of micros within datetime's range (new reference). */
static PyObject *utc_datetime(micros instant)
{
    long long days = instant / MICROS_PER_DAY;
    micros rest = instant % MICROS_PER_DAY;
    if (rest < 0) {
        rest += MICROS_PER_DAY;
        days -= 1;
    }
    int year, month, day;
    civil_from_days(days, &year, &month, &day);
    long long seconds = rest / MICROS_PER_SECOND;
    return PyDateTimeAPI->DateTime_FromDateAndTime(
        year, month, day, (int)(seconds / 3600), (int)(seconds / 60 % 60), (int)(seconds % 60),
        (int)(rest % MICROS_PER_SECOND), PyDateTime_TimeZone_UTC, PyDateTimeAPI->DateTimeType);
}

static int digits(const char *s, int count, int *out)
{
    int number = 0;
    for (int i = 0; i < count; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return 0;
        }
        number = number * 10 + (s[i] - '0');
    }
    *out = number;
    return 1;
}

enum suffix { NO_SUFFIX, UTC_SUFFIX, OFFSET_SUFFIX };

typedef struct {
    micros wall;   /* the date and time as written */
    enum suffix suffix;
    micros offset; /* of OFFSET_SUFFIX */
} written_time;

/* The common shapes, YYYY-MM-DDTHH:MM:SS[.f{1,9}] followed by nothing, Z or ±hh:mm, with a
 * date and time the datetime type accepts: 1, with out filled in. 0 for anything else (a
 * shape utc_or_none may still accept, or a date it refuses): utc_or_none must answer. */
static int read_common_shape(PyObject *text, written_time *out)
{
    if (!PyUnicode_IS_ASCII(text)) {
        return 0;
    }
    Py_ssize_t size = PyUnicode_GET_LENGTH(text);
    const char *s = (const char *)PyUnicode_DATA(text);
    if (size < 19 || size > 35) {
        return 0;
    }
    int year, month, day, hour, minute, second;
    if (!digits(s, 4, &year) || s[4] != '-' || !digits(s + 5, 2, &month) || s[7] != '-' ||
        !digits(s + 8, 2, &day) || s[10] != 'T' || !digits(s + 11, 2, &hour) || s[13] != ':' ||
        !digits(s + 14, 2, &minute) || s[16] != ':' || !digits(s + 17, 2, &second)) {
        return 0;
    }
    if (year < 1 || month < 1 || month > 12 || day < 1 || day > days_in_month(year, month) ||
        hour > 23 || minute > 59 || second > 59) {
        return 0;
    }
    Py_ssize_t at = 19;
    int microsecond = 0;
    if (at < size && s[at] == '.') {
        Py_ssize_t first = ++at;
        while (at < size && s[at] >= '0' && s[at] <= '9') {
            if (at - first < 6) {
                microsecond = microsecond * 10 + (s[at] - '0');
            }
            at++;
        }
        Py_ssize_t count = at - first;
        if (count < 1 || count > 9) {
            return 0;
        }
        for (Py_ssize_t i = count; i < 6; i++) {
            microsecond *= 10; /* digits beyond the sixth are dropped, as fromisoformat does */
        }
    }
    out->wall = micros_of(year, month, day, hour, minute, second, microsecond);
    if (at == size) {
        out->suffix = NO_SUFFIX;
        return 1;
    }
    if (size - at == 1 && s[at] == 'Z') {
        out->suffix = UTC_SUFFIX;
        return 1;
    }
    int offset_hours, offset_minutes;
    if (size - at != 6 || (s[at] != '+' && s[at] != '-') || !digits(s + at + 1, 2, &offset_hours) ||
        s[at + 3] != ':' || !digits(s + at + 4, 2, &offset_minutes) || offset_hours > 23 ||
        offset_minutes > 59) {
        return 0;
    }
    out->suffix = OFFSET_SUFFIX;
    out->offset = (offset_hours * 3600LL + offset_minutes * 60LL) * MICROS_PER_SECOND;
    if (s[at] == '-') {
        out->offset = -out->offset;
    }
    return 1;
}

/* getattr(owner, name, None): 1 with *value set, 0 without the attribute, -1 on failure. */
static int optional_attribute(PyObject *owner, const char *name, PyObject **value)
{
    *value = PyObject_GetAttrString(owner, name);
    if (*value != NULL) {
        return 1;
    }
    if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
        PyErr_Clear();
        return 0;
    }
    return -1;
}

/* The transition table of a pytz zone, as timestamps._steady_offset reads it: n transition
 * times (UTC, naive, as micros) followed by the n UTC offsets (micros) that start at them, in
 * a bytes object. Py_None for a zone without a table or with one this code does not expect.
 * Borrowed reference (held by zone_tables); NULL with an exception on failure. */
static PyObject *zone_table(PyObject *zone)
{
    PyObject *table = PyDict_GetItemWithError(zone_tables, zone);
    if (table != NULL || PyErr_Occurred()) {
        return table;
    }
    PyObject *times = NULL, *periods = NULL, *made = NULL;
    if (optional_attribute(zone, "_utc_transition_times", &times) < 0 ||
        optional_attribute(zone, "_transition_info", &periods) < 0) {
        goto done;
    }
    Py_ssize_t n = 0;
    int usable = times != NULL && periods != NULL && PyList_CheckExact(times) &&
                 PyList_CheckExact(periods) && (n = PyList_GET_SIZE(times)) > 0 &&
                 PyList_GET_SIZE(periods) == n;
    if (usable) {
        made = PyBytes_FromStringAndSize(NULL, 2 * n * (Py_ssize_t)sizeof(micros));
        if (made == NULL) {
            goto done;
        }
        micros *numbers = (micros *)PyBytes_AS_STRING(made);
        for (Py_ssize_t i = 0; i < n && usable; i++) {
            PyObject *time = PyList_GET_ITEM(times, i);
            PyObject *period = PyList_GET_ITEM(periods, i);
            usable = PyDateTime_CheckExact(time) && PyDateTime_DATE_GET_TZINFO(time) == Py_None &&
                     PyTuple_CheckExact(period) && PyTuple_GET_SIZE(period) >= 1 &&
                     PyDelta_CheckExact(PyTuple_GET_ITEM(period, 0));
            if (usable) {
                numbers[i] = micros_of_datetime(time);
                numbers[n + i] = micros_of_timedelta(PyTuple_GET_ITEM(period, 0));
                usable = i == 0 || numbers[i - 1] <= numbers[i]; /* bisect needs order */
            }
        }
        if (!usable) {
            Py_CLEAR(made);
        }
    }
    /* The first table stored for a zone stays (another thread may have stored one meanwhile,
     * and may be reading it): entries are never replaced. */
    table = PyDict_SetDefault(zone_tables, zone, made != NULL ? made : Py_None);
done:
    Py_XDECREF(times);
    Py_XDECREF(periods);
    Py_XDECREF(made); /* zone_tables holds it */
    return table;
}

/* bisect.bisect_right of a sorted array. */
static Py_ssize_t bisect_right(const micros *sorted, Py_ssize_t n, micros x)
{
    Py_ssize_t low = 0, high = n;
    while (low < high) {
        Py_ssize_t middle = low + (high - low) / 2;
        if (x < sorted[middle]) {
            high = middle;
        } else {
            low = middle + 1;
        }
    }
    return low;
}

/* timestamps._steady_offset: 1 with *offset set when no clock change of the zone lies within
 * a day of the wall-clock time, 0 when localize must decide, -1 with an exception. */
static int steady_offset(PyObject *zone, micros wall, micros *offset)
{
    PyObject *table = zone_table(zone);
    if (table == NULL) {
        return -1;
    }
    if (table == Py_None || wall - MICROS_PER_DAY < earliest_micros ||
        wall + MICROS_PER_DAY > latest_micros) {
        return 0;
    }
    Py_ssize_t n = PyBytes_GET_SIZE(table) / (2 * (Py_ssize_t)sizeof(micros));
    const micros *times = (const micros *)PyBytes_AS_STRING(table);
    Py_ssize_t index = bisect_right(times, n, wall - MICROS_PER_DAY);
    if (index != bisect_right(times, n, wall + MICROS_PER_DAY)) {
        return 0;
    }
    *offset = times[n + (index > 0 ? index - 1 : 0)];
    return 1;
}

/* The event's instant in UTC, as utc_or_none answers for the common shapes (new reference to
 * an aware datetime in UTC, or to None when the timestamp is too far in the future). NULL
 * without an exception when utc_or_none must answer; NULL with one on failure. */
static PyObject *common_shape_utc(PyObject *text, PyObject *zone, micros latest)
{
    written_time written;
    if (!read_common_shape(text, &written)) {
        return NULL;
    }
    micros instant = written.wall;
    if (written.suffix == OFFSET_SUFFIX) {
        instant -= written.offset;
    } else if (written.suffix == NO_SUFFIX) {
        micros offset;
        int steady = zone == Py_None ? 0 : steady_offset(zone, written.wall, &offset);
        if (steady <= 0) {
            return NULL;
        }
        instant -= offset;
    }
    if (instant < earliest_micros || instant > latest_micros) {
        return NULL; /* beyond datetime's range: utc_or_none says None */
    }
    if (instant > latest) {
        Py_RETURN_NONE;
    }
    return utc_datetime(instant);
}

/* "YYYY-MM-DDTHH:MM:SS.ffffffZ" of a datetime in UTC: 27 characters into out. */
static void write_instant(PyObject *moment, char *out)
{
    int fields[7] = {PyDateTime_GET_YEAR(moment),          PyDateTime_GET_MONTH(moment),
                     PyDateTime_GET_DAY(moment),           PyDateTime_DATE_GET_HOUR(moment),
                     PyDateTime_DATE_GET_MINUTE(moment),   PyDateTime_DATE_GET_SECOND(moment),
                     PyDateTime_DATE_GET_MICROSECOND(moment)};
    static const int widths[7] = {4, 2, 2, 2, 2, 2, 6};
    static const char after[7] = {'-', '-', 'T', ':', ':', '.', 'Z'};
    int at = 0;
    for (int f = 0; f < 7; f++) {
        int number = fields[f];
        for (int i = widths[f] - 1; i >= 0; i--) {
            out[at + i] = (char)('0' + number % 10);
            number /= 10;
        }
        at += widths[f];
        out[at++] = after[f];
    }
}

/* --- canonical JSON ------------------------------------------------------------------------- */

static int contains(const char *text, Py_ssize_t size, const char *part)
{
    Py_ssize_t length = (Py_ssize_t)strlen(part);
    for (Py_ssize_t at = 0; at + length <= size; at++) {
        if (text[at] == part[0] && memcmp(text + at, part, (size_t)length) == 0) {
            return 1;
        }
    }
    return 0;
}

/* validation._MAY_DIFFER: whether the compact JSON text has, after ":", "," or "[", a null,
 * a number with a negative exponent (-?[0-9.]+e-) or one under 1e-4 spelt out (-?0.0000).
 * The text is UTF-8, whose multi-byte sequences hold no ASCII byte: read byte by byte, it
 * matches where the regular expression matches the str. */
static int may_differ(const char *text, Py_ssize_t size)
{
    for (Py_ssize_t i = 0; i + 1 < size; i++) {
        if (text[i] != ':' && text[i] != ',' && text[i] != '[') {
            continue;
        }
        Py_ssize_t at = i + 1;
        if (size - at >= 4 && memcmp(text + at, "null", 4) == 0) {
            return 1;
        }
        if (text[at] == '-') {
            at++;
        }
        if (size - at >= 6 && memcmp(text + at, "0.0000", 6) == 0) {
            return 1;
        }
        Py_ssize_t run = at;
        while (run < size && ((text[run] >= '0' && text[run] <= '9') || text[run] == '.')) {
            run++;
        }
        if (run > at && size - run >= 2 && text[run] == 'e' && text[run + 1] == '-') {
            return 1;
        }
    }
    return 0;
}

/* validation._canonical_json(value) (new reference to a str), by orjson directly where the
 * Python function would take orjson's text as it is; *encoded is then orjson's UTF-8 bytes (new
 * reference), else NULL (the text came from the Python function). NULL with an exception where
 * the Python function raises. */
static PyObject *canonical_text(PyObject *value, PyObject **encoded)
{
    *encoded = NULL;
    if (orjson_dumps != Py_None) {
        PyObject *args[2] = {value, orjson_option};
        PyObject *bytes = PyObject_Vectorcall(orjson_dumps, args, 1, option_kwnames);
        if (bytes == NULL) {
            if (!PyErr_ExceptionMatches(PyExc_TypeError)) {
                return NULL;
            }
            PyErr_Clear(); /* orjson refuses it: the Python function knows what to do */
        } else if (!PyBytes_CheckExact(bytes)) {
            Py_DECREF(bytes);
            PyErr_SetString(PyExc_TypeError, "orjson.dumps must return bytes");
            return NULL;
        } else {
            const char *text = PyBytes_AS_STRING(bytes);
            Py_ssize_t size = PyBytes_GET_SIZE(bytes);
            /* What _canonical_json_quickly looks for before trusting orjson's spelling. */
            if (!may_differ(text, size)) {
                PyObject *decoded = PyUnicode_DecodeUTF8(text, size, "strict");
                if (decoded == NULL) {
                    Py_DECREF(bytes);
                    return NULL;
                }
                *encoded = bytes;
                return decoded;
            }
            Py_DECREF(bytes);
        }
    }
    PyObject *made = PyObject_CallOneArg(canonical_json, value);
    if (made != NULL && !PyUnicode_CheckExact(made)) {
        Py_DECREF(made);
        PyErr_SetString(PyExc_TypeError, "canonical_json must return a str");
        return NULL;
    }
    return made;
}

/* --- ids --------------------------------------------------------------------------------------- */

static const char hex_digits[] = "0123456789abcdef";

/* validation._uuid_of_int(number) (new reference): uuid.UUID(int=number), made as
 * _uuid_of_int_quickly makes it when the Python side found that route sound. */
static PyObject *new_uuid(PyObject *number)
{
    if (uuid_slots == Py_None) {
        return PyObject_CallOneArg(uuid_of_int, number);
    }
    PyTypeObject *type = (PyTypeObject *)PyTuple_GET_ITEM(uuid_slots, 0);
    PyObject *int_slot = PyTuple_GET_ITEM(uuid_slots, 1);
    PyObject *safe_slot = PyTuple_GET_ITEM(uuid_slots, 2);
    PyObject *made = PyBaseObject_Type.tp_new(type, empty_tuple, NULL);
    if (made == NULL) {
        return NULL;
    }
    if (Py_TYPE(int_slot)->tp_descr_set(int_slot, made, number) < 0 ||
        Py_TYPE(safe_slot)->tp_descr_set(safe_slot, made, PyTuple_GET_ITEM(uuid_slots, 3)) < 0) {
        Py_DECREF(made);
        return NULL;
    }
    return made;
}

/* The int of 16 bytes, big-endian (new reference). */
static PyObject *int_of_bytes(const unsigned char bytes[16])
{
    char text[33];
    for (int i = 0; i < 16; i++) {
        text[2 * i] = hex_digits[bytes[i] >> 4];
        text[2 * i + 1] = hex_digits[bytes[i] & 15];
    }
    text[32] = '\0';
    return PyLong_FromString(text, NULL, 16);
}

static int is_hex(char c)
{
    return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

/* uuid_of_text(text), for the hyphenated 8-4-4-4-12 shape done here (new reference). */
static PyObject *sent_uuid(PyObject *text)
{
    if (PyUnicode_CheckExact(text) && PyUnicode_IS_ASCII(text) &&
        PyUnicode_GET_LENGTH(text) == 36) {
        const char *s = (const char *)PyUnicode_DATA(text);
        char hex[33];
        int at = 0, ok = 1;
        for (int i = 0; i < 36 && ok; i++) {
            if (i == 8 || i == 13 || i == 18 || i == 23) {
                ok = s[i] == '-';
            } else if ((ok = is_hex(s[i]))) {
                hex[at++] = s[i];
            }
        }
        if (ok) {
            hex[32] = '\0';
            PyObject *number = PyLong_FromString(hex, NULL, 16);
            if (number == NULL) {
                return NULL;
            }
            PyObject *made = new_uuid(number);
            Py_DECREF(number);
            return made;
        }
    }
    return PyObject_CallOneArg(uuid_of_text, text);
}

/* The derived id of an event (new reference): uuid5 in the namespace of
 * ["user_id","event_type","instant",value_json], as validation._derive_id computes it, with
 * value_json given as its UTF-8 text. NULL with an exception set on failure; NULL without one
 * when the Python function must answer. */
static PyObject *derived_uuid(PyObject *user_id, PyObject *event_type, PyObject *moment,
                              const char *value, Py_ssize_t value_size)
{
    if (!PyUnicode_IS_ASCII(user_id) || PyUnicode_GET_LENGTH(user_id) != 36 ||
        !PyUnicode_IS_ASCII(event_type) || !PyDateTime_CheckExact(moment) ||
        PyDateTime_DATE_GET_TZINFO(moment) != PyDateTime_TimeZone_UTC) {
        return NULL;
    }
    Py_ssize_t type_size = PyUnicode_GET_LENGTH(event_type);
    /* namespace ["user_id","event_type","instant",value_json] */
    Py_ssize_t size = 16 + 2 + 36 + 3 + type_size + 3 + 27 + 2 + value_size + 1;
    PyObject *message = PyBytes_FromStringAndSize(NULL, size);
    if (message == NULL) {
        return NULL;
    }
    char *out = PyBytes_AS_STRING(message);
    memcpy(out, PyBytes_AS_STRING(namespace_bytes), 16);
    out += 16;
    memcpy(out, "[\"", 2);
    out += 2;
    const char *u = (const char *)PyUnicode_DATA(user_id);
    for (int i = 0; i < 36; i++) {
        out[i] = (u[i] >= 'A' && u[i] <= 'Z') ? (char)(u[i] + ('a' - 'A')) : u[i];
    }
    out += 36;
    memcpy(out, "\",\"", 3);
    out += 3;
    memcpy(out, PyUnicode_DATA(event_type), (size_t)type_size);
    out += type_size;
    memcpy(out, "\",\"", 3);
    out += 3;
    write_instant(moment, out);
    out += 27;
    memcpy(out, "\",", 2);
    out += 2;
    memcpy(out, value, (size_t)value_size);
    out += value_size;
    *out = ']';

    PyObject *hasher = PyObject_CallOneArg(sha1, message);
    Py_DECREF(message);
    if (hasher == NULL) {
        return NULL;
    }
    PyObject *digest_bytes = PyObject_CallMethodNoArgs(hasher, name_digest);
    Py_DECREF(hasher);
    if (digest_bytes == NULL) {
        return NULL;
    }
    if (!PyBytes_Check(digest_bytes) || PyBytes_GET_SIZE(digest_bytes) != 20) {
        Py_DECREF(digest_bytes);
        PyErr_SetString(PyExc_TypeError, "sha1().digest() must be 20 bytes");
        return NULL;
    }
    unsigned char digest[16];
    memcpy(digest, PyBytes_AS_STRING(digest_bytes), 16);
    Py_DECREF(digest_bytes);
    digest[6] = (unsigned char)((digest[6] & 0x0F) | 0x50); /* version 5 */
    digest[8] = (unsigned char)((digest[8] & 0x3F) | 0x80); /* RFC 4122 variant */

    PyObject *number = int_of_bytes(digest);
    if (number == NULL) {
        return NULL;
    }
    PyObject *made = new_uuid(number);
    Py_DECREF(number);
    return made;
}

/* --- the loop -------------------------------------------------------------------------------- */

/* Outcome of one event: a new reference to its NormalisedEvent, Py_None (new reference) when
 * the full route must take it, or NULL with an exception that must reach the caller. */
static PyObject *quick_one(PyObject *event, PyObject *default_zone, PyObject *received_utc,
                           PyObject *latest, micros latest_micros_now)
{
    if (!PyDict_CheckExact(event)) {
        Py_RETURN_NONE;
    }
    /* Every object taken from the event is held by a reference of its own: the calls below
     * run Python code, and nothing the event holds may disappear meanwhile. */
    PyObject *result = NULL, *event_type = NULL, *value = NULL, *zone = NULL, *moment = NULL,
             *value_json = NULL, *encoded = NULL, *user_id = NULL, *id = NULL, *user = NULL;
    PyObject *validator; /* borrowed from whole_is_valid or event_is_valid */

    event_type = PyDict_GetItemWithError(event, key_event_type);
    if (event_type == NULL || !PyUnicode_CheckExact(event_type)) {
        event_type = NULL;
        if (!PyErr_Occurred()) {
            result = Py_NewRef(Py_None);
        }
        goto done;
    }
    Py_INCREF(event_type);
    value = PyDict_GetItemWithError(event, key_value);
    if (value == NULL) {
        if (PyErr_Occurred()) {
            goto done;
        }
        int known = PyDict_Contains(payload_types, event_type);
        if (known != 0) {
            /* the payload schema decides whether {} will do: the full route */
            if (known > 0) {
                result = Py_NewRef(Py_None);
            }
            goto done;
        }
        value = PyDict_New();
        if (value == NULL) {
            goto done;
        }
        validator = event_is_valid;
    } else {
        Py_INCREF(value);
        validator = PyDict_GetItemWithError(whole_is_valid, event_type);
        if (validator == NULL) {
            if (PyErr_Occurred()) {
                goto done;
            }
            validator = event_is_valid;
        }
    }
    PyObject *verdict = PyObject_CallOneArg(validator, event);
    if (verdict == NULL) {
        if (PyErr_ExceptionMatches(PyExc_UnicodeEncodeError)) {
            PyErr_Clear();
            result = Py_NewRef(Py_None);
        }
        goto done;
    }
    int valid = PyObject_IsTrue(verdict);
    Py_DECREF(verdict);
    if (valid <= 0) {
        if (valid == 0) {
            result = Py_NewRef(Py_None);
        }
        goto done;
    }

    /* The schema has been passed: user_id is a UUID, event_id one when sent, the zone a
     * string, the timestamp a string. */
    zone = Py_NewRef(default_zone);
    PyObject *zone_name = PyDict_GetItemWithError(event, key_timezone);
    if (zone_name == NULL && PyErr_Occurred()) {
        goto done;
    }
    if (zone_name != NULL && zone_name != Py_None) {
        Py_SETREF(zone, PyObject_CallOneArg(get_zone, zone_name));
        if (zone == NULL) {
            if (PyErr_ExceptionMatches(timestamp_error)) {
                PyErr_Clear(); /* an unknown zone is an error even without a timestamp */
                result = Py_NewRef(Py_None);
            }
            goto done;
        }
    }
    PyObject *raw = PyDict_GetItemWithError(event, key_timestamp);
    if (raw == NULL && PyErr_Occurred()) {
        goto done;
    }
    if (raw == NULL || raw == Py_None) {
        moment = Py_NewRef(received_utc);
    } else {
        Py_INCREF(raw);
        moment = PyUnicode_CheckExact(raw) ? common_shape_utc(raw, zone, latest_micros_now) : NULL;
        if (moment == NULL && !PyErr_Occurred()) {
            moment = PyObject_CallFunctionObjArgs(utc_or_none, raw, zone, latest, NULL);
        }
        Py_DECREF(raw);
        if (moment == NULL) {
            goto done;
        }
        if (moment == Py_None) {
            result = Py_NewRef(Py_None); /* not a time, or too far in the future */
            goto done;
        }
    }

    value_json = canonical_text(value, &encoded);
    if (value_json == NULL) {
        if (PyErr_ExceptionMatches(PyExc_ValueError) ||
            PyErr_ExceptionMatches(PyExc_RecursionError)) {
            PyErr_Clear(); /* NaN, Infinity, a lone surrogate, too deep */
            result = Py_NewRef(Py_None);
        }
        goto done;
    }
    const char *json_utf8;
    Py_ssize_t json_size;
    if (encoded != NULL) {
        json_utf8 = PyBytes_AS_STRING(encoded);
        json_size = PyBytes_GET_SIZE(encoded);
    } else if ((json_utf8 = PyUnicode_AsUTF8AndSize(value_json, &json_size)) == NULL) {
        goto done;
    }
    if (contains(json_utf8, json_size, "\\u0000")) {
        result = Py_NewRef(Py_None); /* perhaps an escaped NUL: the full route decides */
        goto done;
    }

    user_id = PyDict_GetItemWithError(event, key_user_id);
    if (user_id == NULL || !PyUnicode_CheckExact(user_id)) {
        user_id = NULL;
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "a valid event's user_id must be a str");
        }
        goto done;
    }
    Py_INCREF(user_id);
    PyObject *sent_id = PyDict_GetItemWithError(event, key_event_id);
    if (sent_id == NULL && PyErr_Occurred()) {
        goto done;
    }
    if (sent_id != NULL && sent_id != Py_None) {
        Py_INCREF(sent_id);
        id = sent_uuid(sent_id);
        Py_DECREF(sent_id);
    } else {
        id = derived_uuid(user_id, event_type, moment, json_utf8, json_size);
        if (id == NULL && !PyErr_Occurred()) {
            PyObject *lower = PyObject_CallMethodNoArgs(user_id, name_lower);
            if (lower != NULL) {
                id = PyObject_CallFunctionObjArgs(derive_id, lower, event_type, moment,
                                                  value_json, NULL);
                Py_DECREF(lower);
            }
        }
    }
    if (id == NULL) {
        goto done;
    }
    user = PyObject_CallOneArg(user_uuid, user_id);
    if (user == NULL) {
        goto done;
    }

    result = ((PyTypeObject *)normalised_type)->tp_alloc((PyTypeObject *)normalised_type, 6);
    if (result != NULL) {
        PyObject *fields[6] = {id, user, event_type, moment, value, value_json};
        for (int i = 0; i < 6; i++) {
            PyTuple_SET_ITEM(result, i, Py_NewRef(fields[i]));
        }
    }

done:
    Py_XDECREF(event_type);
    Py_XDECREF(value);
    Py_XDECREF(zone);
    Py_XDECREF(moment);
    Py_XDECREF(value_json);
    Py_XDECREF(encoded);
    Py_XDECREF(user_id);
    Py_XDECREF(id);
    Py_XDECREF(user);
    return result;
}

static PyObject *quick_normalise_all(PyObject *module, PyObject *const *args, Py_ssize_t nargs)
{
    (void)module;
    if (nargs != 4) {
        PyErr_SetString(PyExc_TypeError,
                        "quick_normalise_all(events, default_zone, received_utc, latest)");
        return NULL;
    }
    if (normalised_type == NULL) {
        PyErr_SetString(PyExc_RuntimeError, "engagement_accel.configure() was not called");
        return NULL;
    }
    PyObject *received_utc = args[2], *latest = args[3];
    if (!PyDateTime_CheckExact(received_utc) || !PyDateTime_CheckExact(latest) ||
        PyDateTime_DATE_GET_TZINFO(received_utc) != PyDateTime_TimeZone_UTC ||
        PyDateTime_DATE_GET_TZINFO(latest) != PyDateTime_TimeZone_UTC) {
        PyErr_SetString(PyExc_TypeError, "received_utc and latest must be datetimes in UTC");
        return NULL;
    }
    micros latest_micros_now = micros_of_datetime(latest);
    /* A tuple of its own: the list cannot change under the loop, and holds every event. */
    PyObject *events = PySequence_Tuple(args[0]);
    if (events == NULL) {
        return NULL;
    }
    Py_ssize_t count = PyTuple_GET_SIZE(events);
    PyObject *results = PyList_New(count);
    if (results == NULL) {
        Py_DECREF(events);
        return NULL;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *outcome =
            quick_one(PyTuple_GET_ITEM(events, i), args[1], received_utc, latest, latest_micros_now);
        if (outcome == NULL) {
            Py_DECREF(results);
            Py_DECREF(events);
            return NULL;
        }
        PyList_SET_ITEM(results, i, outcome);
    }
    Py_DECREF(events);
    return results;
}

static PyMethodDef methods[] = {
    {"configure", (PyCFunction)(void (*)(void))configure, METH_VARARGS | METH_KEYWORDS,
     "Hand over the Python objects the quick route calls (once, at import of the validation "
     "module)."},
    {"quick_normalise_all", (PyCFunction)(void (*)(void))quick_normalise_all, METH_FASTCALL,
     "quick_normalise_all(events, default_zone, received_utc, latest): a NormalisedEvent or "
     "None for each event, as functions.validation._quick_normalise_all."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module_definition = {
    PyModuleDef_HEAD_INIT, "engagement_accel",
    "The quick route of functions.validation, compiled (optional: the package works without).",
    -1, methods,
};

PyMODINIT_FUNC PyInit_engagement_accel(void)
{
    PyDateTime_IMPORT;
    if (PyDateTimeAPI == NULL) {
        return NULL;
    }
    key_event_type = PyUnicode_InternFromString("event_type");
    key_value = PyUnicode_InternFromString("value");
    key_timezone = PyUnicode_InternFromString("timezone");
    key_timestamp = PyUnicode_InternFromString("timestamp");
    key_user_id = PyUnicode_InternFromString("user_id");
    key_event_id = PyUnicode_InternFromString("event_id");
    name_digest = PyUnicode_InternFromString("digest");
    name_lower = PyUnicode_InternFromString("lower");
    /* orjson matches keyword names by identity with its own interned strings */
    PyObject *option = PyUnicode_InternFromString("option");
    option_kwnames = option == NULL ? NULL : PyTuple_Pack(1, option);
    Py_XDECREF(option);
    zone_tables = PyDict_New();
    empty_tuple = PyTuple_New(0);
    if (!empty_tuple || !key_event_type || !key_value || !key_timezone || !key_timestamp || !key_user_id ||
        !key_event_id || !name_digest || !name_lower || !option_kwnames || !zone_tables) {
        return NULL;
    }
    earliest_micros = micros_of(1, 1, 1, 0, 0, 0, 0);
    latest_micros = micros_of(9999, 12, 31, 23, 59, 59, 999999);
    PyObject *module = PyModule_Create(&module_definition);
    if (module != NULL && PyModule_AddStringConstant(module, "source_sha256", SOURCE_SHA256) < 0) {
        Py_CLEAR(module);
    }
    return module;
}
