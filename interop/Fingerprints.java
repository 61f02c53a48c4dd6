// The single-object fingerprint of each schema file as the Java Avro
// library computes it: SchemaNormalization.parsingFingerprint("CRC-64-AVRO"),
// the 8 bytes BinaryMessageEncoder writes after C3 01. One line per file:
// <record name> TAB <fingerprint, hex, header byte order> TAB <parsing form>.
// Run by scripts/interop (java Fingerprints.java <files...>).
import java.io.File;
import org.apache.avro.Schema;
import org.apache.avro.SchemaNormalization;

public class Fingerprints {
  public static void main(String[] args) throws Exception {
    for (String path : args) {
      Schema schema = new Schema.Parser().parse(new File(path));
      byte[] fp = SchemaNormalization.parsingFingerprint("CRC-64-AVRO", schema);
      StringBuilder hex = new StringBuilder();
      for (byte b : fp) hex.append(String.format("%02x", b));
      System.out.println(schema.getName() + "\t" + hex + "\t" + SchemaNormalization.toParsingForm(schema));
    }
  }
}
