"""Documents from Parquet files: one string column (`data.text_field`), read one row
group at a time and a bounded batch of rows at a time, never the whole file (a
FineWeb file is ~2 GB; its row groups are the unit `prepare` parallelises over).
"""
from configs.errors import UserError
from data_pipeline import corpus_streams

PARQUET_EXTENSIONS = ('.parquet', '.pq')
ROWS_PER_BATCH = 1024  # Python strings alive at once: bounded whatever the row-group size


def _parquet():
  try:
    import pyarrow.parquet as pq
    return pq
  except ImportError:
    raise UserError('reading Parquet needs the pyarrow package; pip install pyarrow') from None


def _open(path, stream):
  pq = _parquet()
  import pyarrow as pa
  try:
    return pq.ParquetFile(stream)
  except (pa.ArrowException, OSError) as e:
    raise UserError(f'{path} is not a readable Parquet file ({e}); the file is damaged or '
                    'not Parquet: download it again or leave it out') from None


def _check_column(parquet_file, path, text_field):
  import pyarrow as pa
  schema = parquet_file.schema_arrow
  if text_field not in schema.names:
    raise UserError(f'{path} has no column "{text_field}" (its columns: '
                    f'{", ".join(schema.names)}); set data.text_field to the column that '
                    'holds the text')
  column_type = schema.field(text_field).type
  if not (pa.types.is_string(column_type) or pa.types.is_large_string(column_type) or
          getattr(pa.types, 'is_string_view', lambda _: False)(column_type)):
    raise UserError(f'{path}: column "{text_field}" holds {column_type}, not strings; set '
                    'data.text_field to the column that holds the text')


def row_groups(path, text_field):
  """[(rows, uncompressed bytes)] of each row group, after checking the column exists."""
  with corpus_streams.open_raw(path) as stream:
    parquet_file = _open(path, stream)
    _check_column(parquet_file, path, text_field)
    metadata = parquet_file.metadata
    return [(metadata.row_group(i).num_rows, metadata.row_group(i).total_byte_size)
            for i in range(metadata.num_row_groups)]


def read(path, text_field, first_group=0, end_group=None):
  """Yields the non-blank documents of row groups [first_group, end_group)."""
  import pyarrow as pa
  with corpus_streams.open_raw(path) as stream:
    parquet_file = _open(path, stream)
    _check_column(parquet_file, path, text_field)
    metadata = parquet_file.metadata
    end_group = metadata.num_row_groups if end_group is None else end_group
    row = sum(metadata.row_group(i).num_rows for i in range(first_group))
    for group in range(first_group, end_group):
      try:
        batches = parquet_file.iter_batches(batch_size=ROWS_PER_BATCH, row_groups=[group],
                                            columns=[text_field], use_threads=False)
        for batch in batches:
          for text in batch.column(0).to_pylist():
            if text is None:
              raise UserError(f'{path}: row {row} has no "{text_field}" (null); drop such '
                              'rows or set data.text_field to the column that holds the text')
            row += 1
            if text.strip():
              yield text
      except (pa.ArrowException, OSError) as e:
        raise UserError(f'{path}: row group {group} is not readable ({e}); the file is '
                        'damaged: download it again or leave it out') from None
