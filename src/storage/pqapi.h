/*
 * pqapi.h -- libpq, loaded on first use (see core/dl.h): pg.c calls bq_pq.PQexec(...) and so
 * on after bq_pq_load succeeded. The types and constants still come from libpq-fe.h.
 */
#ifndef BINDUQ_PQAPI_H
#define BINDUQ_PQAPI_H

#include "../binduq.h"
#include "../core/err.h"

#include <postgresql/libpq-fe.h>

#define BQ_PQ_FUNCTIONS(X)                                                                     \
    X(PQclear) X(PQgetvalue) X(PQresultStatus) X(PQntuples) X(PQstatus) X(PQexecParams)        \
    X(PQexec) X(PQreset) X(PQescapeIdentifier) X(PQerrorMessage) X(PQresultErrorField)         \
    X(PQgetisnull) X(PQconninfoParse) X(PQconnectdbParams) X(PQresultErrorMessage)            \
    X(PQprepare) X(PQfreemem) X(PQfinish) X(PQexecPrepared) X(PQconsumeInput)                 \
    X(PQtransactionStatus) X(PQsetNoticeProcessor) X(PQresStatus) X(PQnfields)               \
    X(PQconninfoFree) X(PQconnectionNeedsPassword)

struct bq_pq_api {
#define BQ_PQ_FIELD(f) __typeof__(f) *f;
    BQ_PQ_FUNCTIONS(BQ_PQ_FIELD)
#undef BQ_PQ_FIELD
};

extern struct bq_pq_api bq_pq;

/* Loads libpq once per process; every later call returns the first one's verdict. */
bq_status bq_pq_load(bq_err *err);

#endif
