package io.facetrec.eslocal;

import org.apache.lucene.index.FloatVectorValues;
import org.apache.lucene.index.KnnVectorValues;
import org.apache.lucene.index.LeafReader;
import org.elasticsearch.common.settings.Settings;
import org.elasticsearch.index.mapper.MappedFieldType;
import org.elasticsearch.index.mapper.vectors.DenseVectorFieldMapper.DenseVectorFieldType;
import org.elasticsearch.index.mapper.vectors.DenseVectorFieldMapper.ElementType;
import org.elasticsearch.plugins.Plugin;
import org.elasticsearch.plugins.ScriptPlugin;
import org.elasticsearch.script.DocReader;
import org.elasticsearch.script.LeafReaderContextSupplier;
import org.elasticsearch.script.ScoreScript;
import org.elasticsearch.script.ScriptContext;
import org.elasticsearch.script.ScriptEngine;
import org.elasticsearch.script.field.vectors.DenseVectorDocValuesField;
import org.elasticsearch.search.lookup.SearchLookup;
import org.elasticsearch.simdvec.ESVectorUtil;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.util.Collection;
import java.util.List;
import java.util.Map;
import java.util.Set;

/**
 * The script language {@value #LANG}: exact vector scoring for {@code script_score} on a node
 * without painless (lang-painless is not published on Maven Central).
 *
 * <p>One script, {@code dot_product}, with every value in {@code params}:
 * <pre>
 * "script": {"lang": "facetrec_vector", "source": "dot_product",
 *            "params": {"field": "item_embed", "query_vector": [0.1, ...], "shift": 1000.0}}
 * </pre>
 * The score is {@code max(0, dot(query_vector, doc vector) + shift)} ({@code shift} defaults to 0;
 * Elasticsearch rejects negative scores), the same contract as the painless script facetrec sends
 * to full distributions, so {@code score - shift} is the raw dot product. The dot product is the
 * one painless's {@code dotProduct} computes ({@code ESVectorUtil.dotProduct} over float32).
 *
 * <p>Bad parameters (missing or non-numeric query_vector, wrong dimensions, unknown or non-vector
 * field) fail the search with an IllegalArgumentException naming the problem.
 */
public final class VectorScriptPlugin extends Plugin implements ScriptPlugin {

    public static final String LANG = "facetrec_vector";
    static final String DOT_PRODUCT = "dot_product";

    @Override
    public ScriptEngine getScriptEngine(Settings settings, Collection<ScriptContext<?>> contexts) {
        return new Engine();
    }

    static final class Engine implements ScriptEngine {
        @Override
        public String getType() {
            return LANG;
        }

        @Override
        public Set<ScriptContext<?>> getSupportedContexts() {
            return Set.of(ScoreScript.CONTEXT);
        }

        @Override
        public <T> T compile(String name, String code, ScriptContext<T> context, Map<String, String> options) {
            if (context.equals(ScoreScript.CONTEXT) == false) {
                throw new IllegalArgumentException(LANG + " scripts serve script_score only, not [" + context.name + "]");
            }
            if (DOT_PRODUCT.equals(code.strip()) == false) {
                throw new IllegalArgumentException("unknown " + LANG + " script [" + code + "]; the only script is ["
                    + DOT_PRODUCT + "], with params {field, query_vector, shift}");
            }
            return context.factoryClazz.cast(new DotProductFactory());
        }
    }

    static final class DotProductFactory implements ScoreScript.Factory {
        @Override
        public boolean isResultDeterministic() {
            return true;
        }

        @Override
        public ScoreScript.LeafFactory newFactory(Map<String, Object> params, SearchLookup lookup) {
            return new DotProductLeafFactory(params, lookup);
        }
    }

    /** Validates the params once per shard and search; then builds one script per segment. */
    static final class DotProductLeafFactory implements ScoreScript.LeafFactory {
        private static final Set<String> PARAMS = Set.of("field", "query_vector", "shift");

        private final Map<String, Object> params;
        private final SearchLookup lookup;
        private final String field;
        private final float[] queryVector;
        private final double shift;
        /** Raw float vectors straight from Lucene's vector values (indexed, not normalized for cosine). */
        private final boolean readLuceneVectors;

        DotProductLeafFactory(Map<String, Object> params, SearchLookup lookup) {
            this.params = params;
            this.lookup = lookup;
            for (String key : params.keySet()) {
                if (PARAMS.contains(key) == false) {
                    throw new IllegalArgumentException(LANG + " " + DOT_PRODUCT + ": unknown parameter [" + key
                        + "]; expected field, query_vector and optionally shift");
                }
            }
            this.field = fieldName(params.get("field"));
            DenseVectorFieldType type = vectorField(lookup, field);
            this.queryVector = queryVector(params.get("query_vector"), field, type.getVectorDimensions());
            this.shift = shift(params.get("shift"));
            this.readLuceneVectors = type.isSearchable() && type.isNormalized() == false;
        }

        @Override
        public boolean needs_score() {
            return false;
        }

        @Override
        public boolean needs_termStats() {
            return false;
        }

        @Override
        public ScoreScript newInstance(DocReader reader) throws IOException {
            if (readLuceneVectors && reader instanceof LeafReaderContextSupplier supplier) {
                LeafReader leaf = supplier.getLeafReaderContext().reader();
                if (leaf.getFloatVectorValues(field) != null) {
                    return new LuceneVectorsScript(params, lookup, reader, leaf, field, queryVector, shift);
                }
            }
            return new DocValuesFieldScript(params, lookup, reader, field, queryVector, shift);
        }
    }

    /**
     * The fast path: reads each document's float vector from the segment's vector values (the
     * storage behind dense_vector doc values) into Lucene's reused buffer; nothing is allocated
     * per document.
     */
    static final class LuceneVectorsScript extends ScoreScript {
        private final LeafReader leaf;
        private final String field;
        private final float[] queryVector;
        private final double shift;
        private FloatVectorValues values;
        private KnnVectorValues.DocIndexIterator iterator;

        LuceneVectorsScript(Map<String, Object> params, SearchLookup lookup, DocReader reader, LeafReader leaf,
                            String field, float[] queryVector, double shift) throws IOException {
            super(params, lookup, reader);
            this.leaf = leaf;
            this.field = field;
            this.queryVector = queryVector;
            this.shift = shift;
            reset();
        }

        private void reset() throws IOException {
            values = leaf.getFloatVectorValues(field);
            iterator = values.iterator();
        }

        @Override
        public double execute(ExplanationHolder explanation) {
            int doc = _getDocId();
            try {
                if (iterator.docID() > doc) {
                    reset(); // only an explain goes backwards
                }
                int at = iterator.docID() < doc ? iterator.advance(doc) : iterator.docID();
                if (at != doc) {
                    throw missingVector(field);
                }
                return Math.max(0d, ESVectorUtil.dotProduct(queryVector, values.vectorValue(iterator.index())) + shift);
            } catch (IOException e) {
                throw new UncheckedIOException(e);
            }
        }
    }

    /** Any other float dense_vector (not indexed, or cosine-normalized): the doc-values field painless reads. */
    static final class DocValuesFieldScript extends ScoreScript {
        private final String field;
        private final float[] queryVector;
        private final double shift;
        private DenseVectorDocValuesField values;

        DocValuesFieldScript(Map<String, Object> params, SearchLookup lookup, DocReader reader, String field,
                             float[] queryVector, double shift) {
            super(params, lookup, reader);
            this.field = field;
            this.queryVector = queryVector;
            this.shift = shift;
        }

        @Override
        public double execute(ExplanationHolder explanation) {
            try {
                if (values == null) {
                    values = (DenseVectorDocValuesField) field(field); // this segment's field, as painless reads it
                }
                values.setNextDocId(_getDocId());
            } catch (IOException e) {
                throw new UncheckedIOException(e);
            }
            if (values.isEmpty()) {
                throw missingVector(field);
            }
            return Math.max(0d, values.get().dotProduct(queryVector) + shift);
        }
    }

    static IllegalArgumentException missingVector(String field) {
        return new IllegalArgumentException("a document has no value for vector field [" + field + "]");
    }

    static String fieldName(Object value) {
        if (value instanceof String name && name.isEmpty() == false) {
            return name;
        }
        throw new IllegalArgumentException(LANG + " " + DOT_PRODUCT + ": params.field must be the name of a dense_vector "
            + "field, got " + describe(value));
    }

    static DenseVectorFieldType vectorField(SearchLookup lookup, String field) {
        MappedFieldType type = lookup.fieldType(field);
        if (type == null) {
            throw new IllegalArgumentException(LANG + " " + DOT_PRODUCT + ": unknown field [" + field + "]");
        }
        if (type instanceof DenseVectorFieldType vectors) {
            if (vectors.getElementType() != ElementType.FLOAT) {
                throw new IllegalArgumentException(LANG + " " + DOT_PRODUCT + ": field [" + field + "] has element_type ["
                    + vectors.getElementType() + "]; only float vectors are supported");
            }
            return vectors;
        }
        throw new IllegalArgumentException(LANG + " " + DOT_PRODUCT + ": field [" + field + "] is of type ["
            + type.typeName() + "], not dense_vector");
    }

    static float[] queryVector(Object value, String field, int dims) {
        String where = LANG + " " + DOT_PRODUCT + ": params.query_vector";
        if (value == null) {
            throw new IllegalArgumentException(where + " is missing");
        }
        if (!(value instanceof List<?> list)) {
            throw new IllegalArgumentException(where + " must be an array of numbers, got " + describe(value));
        }
        if (list.size() != dims) {
            throw new IllegalArgumentException(where + " has " + list.size() + " dimensions but field [" + field
                + "] has " + dims);
        }
        float[] vector = new float[dims];
        for (int i = 0; i < dims; i++) {
            if (list.get(i) instanceof Number number && Float.isFinite(number.floatValue())) {
                vector[i] = number.floatValue();
            } else {
                throw new IllegalArgumentException(where + "[" + i + "] must be a finite number, got " + describe(list.get(i)));
            }
        }
        return vector;
    }

    static double shift(Object value) {
        if (value == null) {
            return 0d;
        }
        if (value instanceof Number number && Double.isFinite(number.doubleValue())) {
            return number.doubleValue();
        }
        throw new IllegalArgumentException(LANG + " " + DOT_PRODUCT + ": params.shift must be a finite number, got "
            + describe(value));
    }

    private static String describe(Object value) {
        if (value == null) {
            return "null";
        }
        String text = String.valueOf(value);
        return value.getClass().getSimpleName() + " [" + (text.length() > 40 ? text.substring(0, 40) + "..." : text) + "]";
    }
}
