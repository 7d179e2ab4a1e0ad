#!/usr/bin/env python3
"""The S3 API of a cairn gateway driven by boto3 (a real S3 client) over a real socket.

Run by tests/tests/s3.rs with the endpoint and three users' keys in the environment:
CAIRN_S3_ENDPOINT, CAIRN_S3_{ADMIN,ALICE,BOB}_{AK,SK}. Each test uses its own bucket(s).
Exit status 0 only when every test passed.
"""

import datetime
import hashlib
import hmac
import http.client
import io
import os
import socket
import sys
import time
import unittest
import urllib.parse
import urllib.request
from unittest import mock

import boto3
import botocore
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

ENDPOINT = os.environ["CAIRN_S3_ENDPOINT"]
HOSTPORT = urllib.parse.urlparse(ENDPOINT).netloc
PORT = int(HOSTPORT.rsplit(":", 1)[1])
REGION = "us-east-1"


def keys(who):
    return os.environ[f"CAIRN_S3_{who}_AK"], os.environ[f"CAIRN_S3_{who}_SK"]


def client(who="ALICE", secret=None, **cfg):
    ak, sk = keys(who)
    return boto3.client(
        "s3",
        endpoint_url=ENDPOINT,
        aws_access_key_id=ak,
        aws_secret_access_key=secret or sk,
        region_name=REGION,
        config=Config(retries={"max_attempts": 1}, **cfg),
    )


def code(e):
    return e.response["Error"]["Code"], e.response["ResponseMetadata"]["HTTPStatusCode"]


def md5(b):
    return hashlib.md5(b).hexdigest()


class S3Case(unittest.TestCase):
    bucket_no = 0

    def setUp(self):
        self.s3 = client("ALICE")
        S3Case.bucket_no += 1
        self.bucket = f"t{os.getpid()}-{S3Case.bucket_no}"
        self.s3.create_bucket(Bucket=self.bucket)

    def assertS3Error(self, want_code, want_status, fn, *a, **kw):
        with self.assertRaises(ClientError) as cm:
            fn(*a, **kw)
        self.assertEqual(code(cm.exception), (want_code, want_status))
        return cm.exception


class Buckets(S3Case):
    def test_create_head_list_location_delete(self):
        names = [b["Name"] for b in self.s3.list_buckets()["Buckets"]]
        self.assertIn(self.bucket, names)
        self.s3.head_bucket(Bucket=self.bucket)
        loc = self.s3.get_bucket_location(Bucket=self.bucket)
        self.assertIn(loc.get("LocationConstraint"), (None, "", "us-east-1"))
        # Creating it again: already yours; someone else's: already exists.
        self.assertS3Error("BucketAlreadyOwnedByYou", 409, self.s3.create_bucket, Bucket=self.bucket)
        self.assertS3Error("BucketAlreadyExists", 409, client("BOB").create_bucket, Bucket=self.bucket)
        self.s3.put_object(Bucket=self.bucket, Key="k", Body=b"x")
        self.assertS3Error("BucketNotEmpty", 409, self.s3.delete_bucket, Bucket=self.bucket)
        self.s3.delete_object(Bucket=self.bucket, Key="k")
        self.s3.delete_bucket(Bucket=self.bucket)
        self.assertS3Error("404", 404, self.s3.head_bucket, Bucket=self.bucket)
        self.assertS3Error("NoSuchBucket", 404, self.s3.list_objects_v2, Bucket=self.bucket)
        self.assertS3Error("NoSuchBucket", 404, self.s3.put_object, Bucket=self.bucket, Key="k", Body=b"x")

    def test_invalid_bucket_name(self):
        for bad in ["ab", "UPPER", "under_score"]:
            with self.assertRaises((ClientError, botocore.exceptions.ParamValidationError)):
                self.s3.create_bucket(Bucket=bad)


class Objects(S3Case):
    def test_put_get_head_with_metadata(self):
        body = os.urandom(100_000)
        r = self.s3.put_object(
            Bucket=self.bucket, Key="dir/sub/obj.bin", Body=body,
            ContentType="application/x-test", ContentEncoding="identity",
            ContentDisposition='attachment; filename="o.bin"', CacheControl="max-age=60",
            Metadata={"Color": "blue", "n": "1"},
        )
        self.assertEqual(r["ETag"], f'"{md5(body)}"')
        g = self.s3.get_object(Bucket=self.bucket, Key="dir/sub/obj.bin")
        self.assertEqual(g["Body"].read(), body)
        self.assertEqual(g["ETag"], f'"{md5(body)}"')
        self.assertEqual(g["ContentType"], "application/x-test")
        self.assertEqual(g["ContentEncoding"], "identity")
        self.assertEqual(g["ContentDisposition"], 'attachment; filename="o.bin"')
        self.assertEqual(g["CacheControl"], "max-age=60")
        self.assertEqual(g["Metadata"], {"color": "blue", "n": "1"})
        h = self.s3.head_object(Bucket=self.bucket, Key="dir/sub/obj.bin")
        self.assertEqual(h["ContentLength"], len(body))
        self.assertEqual(h["Metadata"], {"color": "blue", "n": "1"})
        # Overwrite with less data: the new object, whole.
        self.s3.put_object(Bucket=self.bucket, Key="dir/sub/obj.bin", Body=b"short")
        self.assertEqual(self.s3.get_object(Bucket=self.bucket, Key="dir/sub/obj.bin")["Body"].read(), b"short")
        # Empty object.
        self.s3.put_object(Bucket=self.bucket, Key="empty", Body=b"")
        g = self.s3.get_object(Bucket=self.bucket, Key="empty")
        self.assertEqual((g["Body"].read(), g["ETag"]), (b"", f'"{md5(b"")}"'))

    def test_missing_keys_and_bad_keys(self):
        self.assertS3Error("NoSuchKey", 404, self.s3.get_object, Bucket=self.bucket, Key="nope")
        self.assertS3Error("404", 404, self.s3.head_object, Bucket=self.bucket, Key="nope")
        self.assertS3Error("NoSuchKey", 404, self.s3.get_object, Bucket=self.bucket, Key="no/such/dir/x")
        # Deleting a missing key succeeds, as in S3.
        self.s3.delete_object(Bucket=self.bucket, Key="nope")
        for bad in ["a//b", "a/../b", "./x"]:
            self.assertS3Error("InvalidArgument", 400, self.s3.put_object, Bucket=self.bucket, Key=bad, Body=b"x")
        self.assertS3Error("KeyTooLongError", 400, self.s3.put_object, Bucket=self.bucket, Key="k" * 1025, Body=b"x")

    def test_ranges(self):
        body = bytes(range(256)) * 4096  # 1 MiB
        self.s3.put_object(Bucket=self.bucket, Key="r", Body=body)
        get = lambda r: self.s3.get_object(Bucket=self.bucket, Key="r", Range=r)
        g = get("bytes=10-19")
        self.assertEqual(g["Body"].read(), body[10:20])
        self.assertEqual(g["ContentRange"], f"bytes 10-19/{len(body)}")
        self.assertEqual(g["ResponseMetadata"]["HTTPStatusCode"], 206)
        self.assertEqual(get("bytes=-100")["Body"].read(), body[-100:])
        self.assertEqual(get(f"bytes={len(body) - 5}-")["Body"].read(), body[-5:])
        self.assertEqual(get("bytes=1000-5000000")["Body"].read(), body[1000:])
        self.assertS3Error("InvalidRange", 416, get, f"bytes={len(body)}-")

    def test_conditional_requests(self):
        self.s3.put_object(Bucket=self.bucket, Key="c", Body=b"v1")
        etag = self.s3.head_object(Bucket=self.bucket, Key="c")["ETag"]
        mtime = self.s3.head_object(Bucket=self.bucket, Key="c")["LastModified"]
        past = mtime - datetime.timedelta(hours=1)
        future = mtime + datetime.timedelta(hours=1)
        g = lambda **kw: self.s3.get_object(Bucket=self.bucket, Key="c", **kw)
        self.assertEqual(g(IfMatch=etag)["Body"].read(), b"v1")
        self.assertS3Error("PreconditionFailed", 412, g, IfMatch='"0123"')
        self.assertS3Error("304", 304, g, IfNoneMatch=etag)
        self.assertEqual(g(IfNoneMatch='"0123"')["Body"].read(), b"v1")
        self.assertEqual(g(IfModifiedSince=past)["Body"].read(), b"v1")
        self.assertS3Error("304", 304, g, IfModifiedSince=future)
        self.assertEqual(g(IfUnmodifiedSince=future)["Body"].read(), b"v1")
        self.assertS3Error("PreconditionFailed", 412, g, IfUnmodifiedSince=past)
        # If-None-Match: * on PUT: create only.
        self.assertS3Error("PreconditionFailed", 412, self.s3.put_object, Bucket=self.bucket, Key="c", Body=b"v2", IfNoneMatch="*")
        self.s3.put_object(Bucket=self.bucket, Key="new", Body=b"n", IfNoneMatch="*")
        # Refused with a body the server never stores: the same connection goes on in step.
        for _ in range(3):
            self.assertS3Error("PreconditionFailed", 412, self.s3.put_object, Bucket=self.bucket, Key="c", Body=b"z" * 300_000, IfNoneMatch="*")
            self.assertEqual(g()["Body"].read(), b"v1")

    def test_delete_objects(self):
        for i in range(5):
            self.s3.put_object(Bucket=self.bucket, Key=f"d/{i}", Body=b"x")
        r = self.s3.delete_objects(
            Bucket=self.bucket,
            Delete={"Objects": [{"Key": f"d/{i}"} for i in range(5)] + [{"Key": "missing"}]},
        )
        self.assertEqual(sorted(d["Key"] for d in r["Deleted"]), sorted([f"d/{i}" for i in range(5)] + ["missing"]))
        self.assertEqual(self.s3.list_objects_v2(Bucket=self.bucket)["KeyCount"], 0)
        # The emptied prefix went too.
        self.assertNotIn("CommonPrefixes", self.s3.list_objects_v2(Bucket=self.bucket, Delimiter="/"))

    def test_copy_object(self):
        self.s3.put_object(Bucket=self.bucket, Key="src", Body=b"copy me", ContentType="text/plain", Metadata={"a": "1"})
        r = self.s3.copy_object(Bucket=self.bucket, Key="dst/copy", CopySource={"Bucket": self.bucket, "Key": "src"})
        self.assertEqual(r["CopyObjectResult"]["ETag"], f'"{md5(b"copy me")}"')
        g = self.s3.get_object(Bucket=self.bucket, Key="dst/copy")
        self.assertEqual((g["Body"].read(), g["ContentType"], g["Metadata"]), (b"copy me", "text/plain", {"a": "1"}))
        # REPLACE: new metadata, same data.
        self.s3.copy_object(
            Bucket=self.bucket, Key="dst/copy2", CopySource={"Bucket": self.bucket, "Key": "src"},
            MetadataDirective="REPLACE", ContentType="text/x-new", Metadata={"b": "2"},
        )
        h = self.s3.head_object(Bucket=self.bucket, Key="dst/copy2")
        self.assertEqual((h["ContentType"], h["Metadata"]), ("text/x-new", {"b": "2"}))
        # Onto itself: only with REPLACE; the data stays.
        self.assertS3Error("InvalidRequest", 400, self.s3.copy_object, Bucket=self.bucket, Key="src", CopySource={"Bucket": self.bucket, "Key": "src"})
        self.s3.copy_object(Bucket=self.bucket, Key="src", CopySource={"Bucket": self.bucket, "Key": "src"}, MetadataDirective="REPLACE", Metadata={"c": "3"})
        g = self.s3.get_object(Bucket=self.bucket, Key="src")
        self.assertEqual((g["Body"].read(), g["Metadata"]), (b"copy me", {"c": "3"}))
        # Conditional copy and a missing source.
        self.assertS3Error("PreconditionFailed", 412, self.s3.copy_object, Bucket=self.bucket, Key="x", CopySource={"Bucket": self.bucket, "Key": "src"}, CopySourceIfMatch='"nope"')
        self.assertS3Error("NoSuchKey", 404, self.s3.copy_object, Bucket=self.bucket, Key="x", CopySource={"Bucket": self.bucket, "Key": "missing"})

    def test_tagging(self):
        self.s3.put_object(Bucket=self.bucket, Key="t", Body=b"x", Tagging="k1=v1&k2=v%202")
        tags = self.s3.get_object_tagging(Bucket=self.bucket, Key="t")["TagSet"]
        self.assertEqual(sorted((t["Key"], t["Value"]) for t in tags), [("k1", "v1"), ("k2", "v 2")])
        self.s3.put_object_tagging(Bucket=self.bucket, Key="t", Tagging={"TagSet": [{"Key": "only", "Value": "one"}]})
        self.assertEqual(self.s3.get_object_tagging(Bucket=self.bucket, Key="t")["TagSet"], [{"Key": "only", "Value": "one"}])
        etag = self.s3.head_object(Bucket=self.bucket, Key="t")["ETag"]
        self.assertEqual(etag, f'"{md5(b"x")}"', "tagging must not change the ETag")
        self.s3.delete_object_tagging(Bucket=self.bucket, Key="t")
        self.assertEqual(self.s3.get_object_tagging(Bucket=self.bucket, Key="t")["TagSet"], [])
        too_many = [{"Key": f"k{i}", "Value": "v"} for i in range(11)]
        self.assertS3Error("InvalidTag", 400, self.s3.put_object_tagging, Bucket=self.bucket, Key="t", Tagging={"TagSet": too_many})

    def test_directory_markers(self):
        self.s3.put_object(Bucket=self.bucket, Key="folder/", Body=b"")
        h = self.s3.head_object(Bucket=self.bucket, Key="folder/")
        self.assertEqual(h["ContentLength"], 0)
        keys = [o["Key"] for o in self.s3.list_objects_v2(Bucket=self.bucket)["Contents"]]
        self.assertEqual(keys, ["folder/"])
        self.s3.put_object(Bucket=self.bucket, Key="folder/in", Body=b"x")
        keys = [o["Key"] for o in self.s3.list_objects_v2(Bucket=self.bucket)["Contents"]]
        self.assertEqual(keys, ["folder/", "folder/in"])
        self.s3.delete_object(Bucket=self.bucket, Key="folder/in")
        self.s3.delete_object(Bucket=self.bucket, Key="folder/")
        self.assertEqual(self.s3.list_objects_v2(Bucket=self.bucket)["KeyCount"], 0)

    def test_content_md5(self):
        import base64
        good = base64.b64encode(hashlib.md5(b"data").digest()).decode()
        bad = base64.b64encode(hashlib.md5(b"other").digest()).decode()
        self.s3.put_object(Bucket=self.bucket, Key="m", Body=b"data", ContentMD5=good)
        self.assertS3Error("BadDigest", 400, self.s3.put_object, Bucket=self.bucket, Key="m2", Body=b"data", ContentMD5=bad)
        self.assertS3Error("NoSuchKey", 404, self.s3.get_object, Bucket=self.bucket, Key="m2")


class Listing(S3Case):
    KEYS = ["a", "a-b", "a/b", "a/c/d", "a/c/e", "b/x", "b/y/z", "c", "photos/2024/01.jpg", "photos/2024/02.jpg", "photos/2025/01.jpg"]

    def setUp(self):
        super().setUp()
        # "a" and "a/b" cannot both be keys of one file tree: "a" is a directory here.
        for k in self.KEYS:
            if k == "a":
                continue
            self.s3.put_object(Bucket=self.bucket, Key=k, Body=k.encode())
        self.keys = sorted(k for k in self.KEYS if k != "a")

    def all_v2(self, **kw):
        out, prefixes, token, pages = [], [], None, 0
        while True:
            args = dict(Bucket=self.bucket, **kw)
            if token:
                args["ContinuationToken"] = token
            r = self.s3.list_objects_v2(**args)
            pages += 1
            out += [o["Key"] for o in r.get("Contents", [])]
            prefixes += [p["Prefix"] for p in r.get("CommonPrefixes", [])]
            if not r["IsTruncated"]:
                return out, prefixes, pages
            token = r["NextContinuationToken"]

    def test_v2_full_and_paged(self):
        keys, _, _ = self.all_v2()
        self.assertEqual(keys, self.keys)
        keys, _, pages = self.all_v2(MaxKeys=2)
        self.assertEqual(keys, self.keys)
        self.assertEqual(pages, (len(self.keys) + 1) // 2)
        r = self.s3.list_objects_v2(Bucket=self.bucket)
        self.assertEqual(r["KeyCount"], len(self.keys))
        o = [c for c in r["Contents"] if c["Key"] == "a/b"][0]
        self.assertEqual((o["Size"], o["ETag"]), (3, f'"{md5(b"a/b")}"'))

    def test_v2_prefix_delimiter_start_after(self):
        keys, prefixes, _ = self.all_v2(Delimiter="/")
        self.assertEqual(keys, ["a-b", "c"])
        self.assertEqual(prefixes, ["a/", "b/", "photos/"])
        keys, prefixes, _ = self.all_v2(Prefix="photos/", Delimiter="/")
        self.assertEqual((keys, prefixes), ([], ["photos/2024/", "photos/2025/"]))
        keys, prefixes, _ = self.all_v2(Prefix="photos/2024/")
        self.assertEqual(keys, ["photos/2024/01.jpg", "photos/2024/02.jpg"])
        keys, _, _ = self.all_v2(Prefix="a/c")
        self.assertEqual(keys, ["a/c/d", "a/c/e"])
        keys, _, _ = self.all_v2(Prefix="a")
        self.assertEqual(keys, ["a-b", "a/b", "a/c/d", "a/c/e"])
        keys, _, _ = self.all_v2(StartAfter="a/c/d")
        self.assertEqual(keys, [k for k in self.keys if k > "a/c/d"])
        keys, prefixes, pages = self.all_v2(Delimiter="/", MaxKeys=1)
        self.assertEqual((keys, prefixes, pages), (["a-b", "c"], ["a/", "b/", "photos/"], 5))
        keys, _, _ = self.all_v2(Prefix="nothing/")
        self.assertEqual(keys, [])

    def test_v1_markers(self):
        out, marker = [], None
        while True:
            args = dict(Bucket=self.bucket, MaxKeys=3)
            if marker:
                args["Marker"] = marker
            r = self.s3.list_objects(**args)
            got = [o["Key"] for o in r.get("Contents", [])]
            out += got
            if not r["IsTruncated"]:
                break
            marker = r.get("NextMarker") or got[-1]
        self.assertEqual(out, self.keys)
        r = self.s3.list_objects(Bucket=self.bucket, Delimiter="/")
        self.assertEqual([p["Prefix"] for p in r["CommonPrefixes"]], ["a/", "b/", "photos/"])


class Multipart(S3Case):
    def test_out_of_order_parts_complete(self):
        key = "mp/big.bin"
        up = self.s3.create_multipart_upload(Bucket=self.bucket, Key=key, ContentType="video/x-test", Metadata={"m": "1"})
        uid = up["UploadId"]
        parts = [os.urandom(5 * 1024 * 1024), os.urandom(5 * 1024 * 1024 + 17), os.urandom(1234)]
        etags = {}
        for n in (3, 1, 2):  # out of order
            etags[n] = self.s3.upload_part(Bucket=self.bucket, Key=key, UploadId=uid, PartNumber=n, Body=parts[n - 1])["ETag"]
        # Re-uploading a part replaces it.
        etags[3] = self.s3.upload_part(Bucket=self.bucket, Key=key, UploadId=uid, PartNumber=3, Body=parts[2])["ETag"]
        listed = self.s3.list_parts(Bucket=self.bucket, Key=key, UploadId=uid)["Parts"]
        self.assertEqual([(p["PartNumber"], p["Size"]) for p in listed], [(1, len(parts[0])), (2, len(parts[1])), (3, len(parts[2]))])
        uploads = self.s3.list_multipart_uploads(Bucket=self.bucket)["Uploads"]
        self.assertEqual([(u["Key"], u["UploadId"]) for u in uploads], [(key, uid)])
        # Not visible before completion.
        self.assertS3Error("NoSuchKey", 404, self.s3.get_object, Bucket=self.bucket, Key=key)
        r = self.s3.complete_multipart_upload(
            Bucket=self.bucket, Key=key, UploadId=uid,
            MultipartUpload={"Parts": [{"PartNumber": n, "ETag": etags[n]} for n in (1, 2, 3)]},
        )
        want = hashlib.md5(b"".join(hashlib.md5(p).digest() for p in parts)).hexdigest() + "-3"
        self.assertEqual(r["ETag"], f'"{want}"')
        g = self.s3.get_object(Bucket=self.bucket, Key=key)
        self.assertEqual(g["Body"].read(), b"".join(parts))
        self.assertEqual((g["ETag"], g["ContentType"], g["Metadata"]), (f'"{want}"', "video/x-test", {"m": "1"}))
        self.assertNotIn("Uploads", self.s3.list_multipart_uploads(Bucket=self.bucket))
        self.assertS3Error("NoSuchUpload", 404, self.s3.list_parts, Bucket=self.bucket, Key=key, UploadId=uid)

    def test_errors_and_abort(self):
        key = "mp/e"
        uid = self.s3.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]
        small = self.s3.upload_part(Bucket=self.bucket, Key=key, UploadId=uid, PartNumber=1, Body=b"x" * 1000)["ETag"]
        last = self.s3.upload_part(Bucket=self.bucket, Key=key, UploadId=uid, PartNumber=2, Body=b"y")["ETag"]
        complete = lambda parts: self.s3.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=uid, MultipartUpload={"Parts": parts})
        self.assertS3Error("EntityTooSmall", 400, complete, [{"PartNumber": 1, "ETag": small}, {"PartNumber": 2, "ETag": last}])
        self.assertS3Error("InvalidPartOrder", 400, complete, [{"PartNumber": 2, "ETag": last}, {"PartNumber": 1, "ETag": small}])
        self.assertS3Error("InvalidPart", 400, complete, [{"PartNumber": 7, "ETag": last}])
        self.assertS3Error("InvalidPart", 400, complete, [{"PartNumber": 1, "ETag": '"00000000000000000000000000000000"'}])
        self.s3.abort_multipart_upload(Bucket=self.bucket, Key=key, UploadId=uid)
        self.assertS3Error("NoSuchUpload", 404, self.s3.abort_multipart_upload, Bucket=self.bucket, Key=key, UploadId=uid)
        self.assertS3Error("NoSuchUpload", 404, self.s3.upload_part, Bucket=self.bucket, Key=key, UploadId="0" * 32, PartNumber=1, Body=b"x")
        for _ in range(3):
            self.assertS3Error("NoSuchUpload", 404, self.s3.upload_part, Bucket=self.bucket, Key=key, UploadId="0" * 32, PartNumber=1, Body=b"y" * 300_000)
            self.assertS3Error("NoSuchKey", 404, self.s3.get_object, Bucket=self.bucket, Key=key)
        self.assertS3Error("NoSuchKey", 404, self.s3.get_object, Bucket=self.bucket, Key=key)

    def test_upload_part_copy_and_transfer_manager(self):
        src = os.urandom(6 * 1024 * 1024)
        self.s3.put_object(Bucket=self.bucket, Key="src", Body=src)
        key = "mp/copied"
        uid = self.s3.create_multipart_upload(Bucket=self.bucket, Key=key)["UploadId"]
        e1 = self.s3.upload_part_copy(Bucket=self.bucket, Key=key, UploadId=uid, PartNumber=1, CopySource={"Bucket": self.bucket, "Key": "src"}, CopySourceRange="bytes=0-5242879")["CopyPartResult"]["ETag"]
        e2 = self.s3.upload_part_copy(Bucket=self.bucket, Key=key, UploadId=uid, PartNumber=2, CopySource={"Bucket": self.bucket, "Key": "src"}, CopySourceRange=f"bytes=5242880-{len(src) - 1}")["CopyPartResult"]["ETag"]
        self.s3.complete_multipart_upload(Bucket=self.bucket, Key=key, UploadId=uid, MultipartUpload={"Parts": [{"PartNumber": 1, "ETag": e1}, {"PartNumber": 2, "ETag": e2}]})
        self.assertEqual(self.s3.get_object(Bucket=self.bucket, Key=key)["Body"].read(), src)
        # boto3's transfer manager: multipart with concurrent parts, then a ranged parallel download.
        from boto3.s3.transfer import TransferConfig
        tc = TransferConfig(multipart_threshold=5 * 1024 * 1024, multipart_chunksize=5 * 1024 * 1024, max_concurrency=4)
        data = os.urandom(17 * 1024 * 1024 + 5)
        self.s3.upload_fileobj(io.BytesIO(data), self.bucket, "tm/obj", Config=tc)
        out = io.BytesIO()
        self.s3.download_fileobj(self.bucket, "tm/obj", out, Config=tc)
        self.assertEqual(out.getvalue(), data)
        self.assertTrue(self.s3.head_object(Bucket=self.bucket, Key="tm/obj")["ETag"].endswith('-4"'))


class Auth(S3Case):
    def test_wrong_secret_and_unknown_key(self):
        bad = client("ALICE", secret="x" * 40)
        self.assertS3Error("SignatureDoesNotMatch", 403, bad.list_objects_v2, Bucket=self.bucket)
        nobody = boto3.client("s3", endpoint_url=ENDPOINT, aws_access_key_id="CKNOBODY0000000000000", aws_secret_access_key="y" * 40, region_name=REGION)
        self.assertS3Error("InvalidAccessKeyId", 403, nobody.list_buckets)

    def test_skewed_clock(self):
        skewed = client("ALICE")
        old = datetime.datetime.utcnow() - datetime.timedelta(hours=2)
        with mock.patch("botocore.auth.get_current_datetime", return_value=old):
            self.assertS3Error("RequestTimeTooSkewed", 403, skewed.list_objects_v2, Bucket=self.bucket)

    def test_tampered_header(self):
        s3 = client("ALICE")

        def tamper(request, **kw):
            request.headers["x-amz-meta-who"] = "mallory"

        s3.meta.events.register("before-send.s3.PutObject", tamper)
        self.assertS3Error("SignatureDoesNotMatch", 403, s3.put_object, Bucket=self.bucket, Key="k", Body=b"x", Metadata={"who": "alice"})
        self.assertS3Error("NoSuchKey", 404, self.s3.get_object, Bucket=self.bucket, Key="k")

    def test_presigned_urls_and_expiry(self):
        self.s3.put_object(Bucket=self.bucket, Key="p", Body=b"presigned")
        # boto3 presigns with SigV2 by default; SigV2 GET works too.
        v2 = self.s3.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": "p"}, ExpiresIn=60)
        self.assertEqual(urllib.request.urlopen(v2, timeout=30).read(), b"presigned")
        self.s3 = client("ALICE", signature_version="s3v4")
        url = self.s3.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": "p"}, ExpiresIn=60)
        self.assertIn("X-Amz-Algorithm=AWS4-HMAC-SHA256", url)
        self.assertEqual(urllib.request.urlopen(url, timeout=30).read(), b"presigned")
        put = self.s3.generate_presigned_url("put_object", Params={"Bucket": self.bucket, "Key": "up"}, ExpiresIn=60)
        req = urllib.request.Request(put, data=b"uploaded", method="PUT")
        urllib.request.urlopen(req, timeout=30).read()
        self.assertEqual(self.s3.get_object(Bucket=self.bucket, Key="up")["Body"].read(), b"uploaded")
        short = self.s3.generate_presigned_url("get_object", Params={"Bucket": self.bucket, "Key": "p"}, ExpiresIn=1)
        time.sleep(2.5)
        with self.assertRaises(urllib.error.HTTPError) as cm:
            urllib.request.urlopen(short, timeout=30)
        self.assertEqual(cm.exception.code, 403)
        self.assertIn(b"AccessDenied", cm.exception.read())
        # A tampered presigned URL.
        with self.assertRaises(urllib.error.HTTPError) as cm:
            urllib.request.urlopen(url.replace("/p?", "/up?"), timeout=30)
        self.assertEqual(cm.exception.code, 403)

    def test_permissions_and_public_read(self):
        bob = client("BOB")
        self.s3.put_object(Bucket=self.bucket, Key="secret", Body=b"alice's")
        self.assertS3Error("AccessDenied", 403, bob.get_object, Bucket=self.bucket, Key="secret")
        self.assertS3Error("AccessDenied", 403, bob.put_object, Bucket=self.bucket, Key="x", Body=b"x")
        self.assertNotIn(self.bucket, [b["Name"] for b in bob.list_buckets()["Buckets"]])
        anon = boto3.client("s3", endpoint_url=ENDPOINT, region_name=REGION, config=Config(signature_version=botocore.UNSIGNED))
        self.assertS3Error("AccessDenied", 403, anon.get_object, Bucket=self.bucket, Key="secret")
        self.assertS3Error("AccessDenied", 403, anon.list_buckets)
        # public-read: anonymous reads and lists, never writes.
        self.s3.put_bucket_acl(Bucket=self.bucket, ACL="public-read")
        time.sleep(2.5)  # other gateways refresh their user cache within 2 s
        self.assertEqual(anon.get_object(Bucket=self.bucket, Key="secret")["Body"].read(), b"alice's")
        self.assertEqual(anon.list_objects_v2(Bucket=self.bucket)["KeyCount"], 1)
        self.assertS3Error("AccessDenied", 403, anon.put_object, Bucket=self.bucket, Key="y", Body=b"y")
        self.assertS3Error("AccessDenied", 403, bob.put_object, Bucket=self.bucket, Key="y", Body=b"y")
        acl = self.s3.get_bucket_acl(Bucket=self.bucket)
        self.assertIn("READ", [g["Permission"] for g in acl["Grants"] if g["Grantee"].get("URI", "").endswith("AllUsers")])
        # Only the owner deletes the bucket; the admin can do anything.
        self.assertS3Error("AccessDenied", 403, bob.delete_bucket, Bucket=self.bucket)
        admin = client("ADMIN")
        self.assertEqual(admin.get_object(Bucket=self.bucket, Key="secret")["Body"].read(), b"alice's")


def signed_raw(method, path, body=b"", headers=None, host=HOSTPORT, who="ALICE", query=""):
    """A SigV4-signed request sent with http.client (for what boto3 will not do)."""
    ak, sk = keys(who)
    url = f"http://{host}{path}" + (f"?{query}" if query else "")
    req = AWSRequest(method=method, url=url, data=body, headers=dict(headers or {}))
    req.headers["x-amz-content-sha256"] = hashlib.sha256(body).hexdigest()
    req.headers["host"] = host
    SigV4Auth(Credentials(ak, sk), "s3", REGION).add_auth(req)
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=60)
    conn.request(method, path + (f"?{query}" if query else ""), body=body, headers=dict(req.headers.items()))
    resp = conn.getresponse()
    data = resp.read()
    conn.close()
    return resp.status, data


def hmac_sha256(key, msg):
    return hmac.new(key, msg.encode() if isinstance(msg, str) else msg, hashlib.sha256).digest()


def chunked_put(path, chunks, secret_override=None, tamper_chunk=None):
    """PUT with STREAMING-AWS4-HMAC-SHA256-PAYLOAD (aws-chunked, each chunk signed)."""
    ak, sk = keys("ALICE")
    sk = secret_override or sk
    now = datetime.datetime.now(datetime.timezone.utc)
    amz_date = now.strftime("%Y%m%dT%H%M%SZ")
    day = now.strftime("%Y%m%d")
    scope = f"{day}/{REGION}/s3/aws4_request"
    decoded_len = sum(len(c) for c in chunks)
    headers = {
        "host": HOSTPORT,
        "x-amz-content-sha256": "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
        "x-amz-date": amz_date,
        "x-amz-decoded-content-length": str(decoded_len),
        "content-encoding": "aws-chunked",
    }
    signed = sorted(headers)
    canonical = "\n".join([
        "PUT", urllib.parse.quote(path), "",
        "".join(f"{h}:{headers[h]}\n" for h in signed),
        ";".join(signed),
        "STREAMING-AWS4-HMAC-SHA256-PAYLOAD",
    ])
    sts = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope, hashlib.sha256(canonical.encode()).hexdigest()])
    key = hmac_sha256(hmac_sha256(hmac_sha256(hmac_sha256(("AWS4" + sk).encode(), day), REGION), "s3"), "aws4_request")
    seed = hmac.new(key, sts.encode(), hashlib.sha256).hexdigest()
    body = b""
    prev = seed
    empty = hashlib.sha256(b"").hexdigest()
    for i, c in enumerate(list(chunks) + [b""]):
        csts = "\n".join(["AWS4-HMAC-SHA256-PAYLOAD", amz_date, scope, prev, empty, hashlib.sha256(c).hexdigest()])
        sig = hmac.new(key, csts.encode(), hashlib.sha256).hexdigest()
        data = c
        if tamper_chunk == i:
            data = bytes([c[0] ^ 1]) + c[1:]
        body += f"{len(c):x};chunk-signature={sig}\r\n".encode() + data + b"\r\n"
        prev = sig
    headers["authorization"] = f"AWS4-HMAC-SHA256 Credential={ak}/{scope}, SignedHeaders={';'.join(signed)}, Signature={seed}"
    headers["content-length"] = str(len(body))
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=60)
    conn.request("PUT", path, body=body, headers=headers)
    resp = conn.getresponse()
    out = resp.read()
    conn.close()
    return resp.status, out


class Wire(S3Case):
    def test_aws_chunked_streaming_upload(self):
        chunks = [os.urandom(64 * 1024) for _ in range(5)] + [b"tail"]
        status, out = chunked_put(f"/{self.bucket}/chunked", chunks)
        self.assertEqual(status, 200, out)
        self.assertEqual(self.s3.get_object(Bucket=self.bucket, Key="chunked")["Body"].read(), b"".join(chunks))
        # A chunk changed in flight fails its chunk signature and leaves no object.
        status, out = chunked_put(f"/{self.bucket}/tampered", chunks, tamper_chunk=2)
        self.assertEqual(status, 403, out)
        self.assertIn(b"SignatureDoesNotMatch", out)
        self.assertS3Error("NoSuchKey", 404, self.s3.get_object, Bucket=self.bucket, Key="tampered")

    def test_virtual_host_style(self):
        self.s3.put_object(Bucket=self.bucket, Key="vh", Body=b"virtual")
        status, data = signed_raw("GET", "/vh", host=f"{self.bucket}.localhost:{PORT}")
        self.assertEqual((status, data), (200, b"virtual"))
        status, data = signed_raw("PUT", "/vh2", body=b"made virtually", host=f"{self.bucket}.localhost:{PORT}")
        self.assertEqual(status, 200, data)
        self.assertEqual(self.s3.get_object(Bucket=self.bucket, Key="vh2")["Body"].read(), b"made virtually")
        status, data = signed_raw("GET", "/", host=f"{self.bucket}.localhost:{PORT}", query="list-type=2")
        self.assertEqual(status, 200)
        self.assertIn(b"<Key>vh2</Key>", data)

    def test_interrupted_upload_leaves_nothing(self):
        ak, sk = keys("ALICE")
        path = f"/{self.bucket}/partial"
        total = 8 * 1024 * 1024
        req = AWSRequest(method="PUT", url=f"http://{HOSTPORT}{path}", headers={"host": HOSTPORT, "x-amz-content-sha256": "UNSIGNED-PAYLOAD", "content-length": str(total)})
        SigV4Auth(Credentials(ak, sk), "s3", REGION).add_auth(req)
        sock = socket.create_connection(("127.0.0.1", PORT), timeout=30)
        head = f"PUT {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in req.headers.items()) + "\r\n"
        sock.sendall(head.encode())
        sock.sendall(os.urandom(3 * 1024 * 1024))
        sock.close()  # the client goes away mid-body
        deadline = time.time() + 20
        while True:
            listed = self.s3.list_objects_v2(Bucket=self.bucket)
            if listed["KeyCount"] == 0:
                break
            self.assertLess(time.time(), deadline, listed)
            time.sleep(0.2)
        self.assertS3Error("NoSuchKey", 404, self.s3.get_object, Bucket=self.bucket, Key="partial")

    def test_malformed_requests_get_errors(self):
        # Garbage, a broken request line and oversized headers: an error or a closed socket,
        # and the gateway keeps serving.
        for raw in [b"\x00\x01\x02garbage\r\n\r\n", b"GET\r\n\r\n", b"GET / HTTP/1.1\r\nHost: x\r\n" + b"X-Big: " + b"a" * 200_000 + b"\r\n\r\n"]:
            s = socket.create_connection(("127.0.0.1", PORT), timeout=30)
            try:
                s.sendall(raw)
                s.recv(4096)
            except OSError:
                pass
            s.close()
        # Bad XML for DeleteObjects.
        status, data = signed_raw("POST", f"/{self.bucket}", body=b"<Delete><Object><Key>", query="delete=", headers={"content-md5": "1B2M2Y8AsgTpgAmY7PhCfg=="})
        self.assertEqual(status // 100, 4, data)
        self.assertIn(b"<Code>", data)
        self.s3.put_object(Bucket=self.bucket, Key="alive", Body=b"still serving")
        self.assertEqual(self.s3.get_object(Bucket=self.bucket, Key="alive")["Body"].read(), b"still serving")


if __name__ == "__main__":
    pattern = sys.argv[1] if len(sys.argv) > 1 else None
    loader = unittest.TestLoader()
    if pattern:
        loader.testNamePatterns = [pattern]
    suite = loader.loadTestsFromModule(sys.modules[__name__])
    result = unittest.TextTestRunner(verbosity=2).run(suite)
    print(f"boto3 suite: {result.testsRun} run, {len(result.failures) + len(result.errors)} not ok")
    sys.exit(0 if result.wasSuccessful() else 1)
